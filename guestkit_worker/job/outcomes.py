"""Every document that says how a job ended: results, their error objects and the reason kept
beside a failed job file.  Their statuses are those of :mod:`.states`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import JobValidationError
from .protocol import validate_document
from .timestamps import stamp


def error_document(code: str, message: str, *, phase: str, recoverable: bool = False,
                   retry_recommended: bool = False, details: dict | None = None) -> dict:
    error = {"code": code, "message": message, "phase": phase, "recoverable": recoverable,
             "retry_recommended": retry_recommended}
    if details:
        error["details"] = details
    return error


def rejection_error(err: BaseException) -> dict:
    """The error object of a job refused at admission (JobValidationError or HandlerError)."""
    details = None
    field = getattr(err, "field", None)
    if field:
        details = {"field": field}
        problems = getattr(err, "problems", ())
        if len(problems) > 1:
            details["problems"] = [str(p) for p in problems]
    return error_document(getattr(err, "code", "INVALID_JOB"), str(err), phase="validation", details=details)


def execution_error(status: str, err: BaseException | None, *, timeout: float | None = None,
                    on_request: bool = False) -> dict:
    """The error object of a run that started and did not complete."""
    recoverable = bool(getattr(err, "recoverable", False))
    error = error_document(getattr(err, "code", "HANDLER_ERROR"), getattr(err, "message", str(err)),
                           phase=getattr(err, "phase", None) or "execution", recoverable=recoverable,
                           retry_recommended=status == "cancelled" or recoverable,
                           details=getattr(err, "details", None))
    if status == "timeout":
        error.update(code="TIMEOUT",
                     message=f"job exceeded its timeout of {timeout}s; its processes were killed")
    elif status == "cancelled" and on_request:
        error.update(code="CANCELLED",
                     message="job was cancelled on request while it ran; it will not be run again",
                     recoverable=False, retry_recommended=False)
    elif status == "cancelled":
        error.update(code="CANCELLED", message="worker shut down before the job finished; "
                                               "the job file was returned to the queue")
    return error


def crash_error(dead_worker: str, attempt: int, max_attempts: int) -> dict:
    return error_document("WORKER_CRASHED", f"worker {dead_worker} died while running attempt {attempt} of "
                          f"{max_attempts}; no attempts left", phase="execution", recoverable=True,
                          retry_recommended=True)


def result_document(*, job_id: str | None, status: str, worker_id: str, job: Any = None,
                    started_at: float | None = None, duration: float = 0.0, data: Any = None,
                    outputs: dict | None = None, error: dict | None = None) -> dict:
    """A result document (``job``: the validated Job when there is one)."""
    return {"job_id": job_id, "status": status,
            ("completed_at" if status == "completed" else "failed_at"): stamp(),
            "worker_id": worker_id,
            "operation": job.operation if job else None,
            "execution_summary": {
                "started_at": stamp(started_at) if started_at is not None else None,
                "duration_seconds": round(duration, 6),
                "attempt": job.attempt if job else 1,
                "idempotency_key": job.idempotency_key if job else None},
            "outputs": outputs or {"primary": None, "artifacts": []},
            "error": error,
            "observability": job.observability if job else None,
            "data": data}


def given_back(result: Mapping | None) -> bool:
    """True for the result a run leaves when its job was returned to the queue unfinished
    (shutdown): ``cancelled`` with ``retry_recommended``.  It belongs to no run still in
    progress: whoever runs the job next replaces it, and recovery never archives the job
    with it."""
    if not isinstance(result, Mapping):
        return False
    error = result.get("error")
    return result.get("status") == "cancelled" and isinstance(error, dict) \
        and bool(error.get("retry_recommended"))


def reason_document(job_file: str, job_id: str | None, status: str, worker_id: str,
                    error: dict | None) -> dict:
    """What is kept beside a job file archived in failed/."""
    return {"job_file": job_file, "job_id": job_id, "status": status, "worker_id": worker_id,
            "at": stamp(), "error": error}


@dataclass(frozen=True)
class QueuedJob:
    """What a queue knows of a job that waited and never started, handed by a transport to the
    builder of its documents (:func:`cancelled_before_start`).

    ``name``: where it waited (a job file, a stream entry); ``worker_id``: who acts on it now
    (a worker, the API or the command line: the transport's worker id); ``doc``: its document
    when the transport has it at hand, else None, and then ``operation`` and ``attempt`` as
    the transport recorded them."""

    job_id: str
    name: str
    worker_id: str
    doc: Mapping | None = None
    operation: str | None = None
    attempt: int | None = None


def cancelled_before_start(queued: QueuedJob) -> tuple[dict, dict]:
    """(result, reason) of a waiting job cancelled on request: it never ran.

    Args:
        queued: the facts the transport has of the job.

    Returns:
        The ``cancelled`` result document (its ``worker_id`` is whoever cancelled it) and the
        reason kept beside an archived job file.
    """
    try:
        job = validate_document(dict(queued.doc)) if isinstance(queued.doc, Mapping) else None
    except JobValidationError:
        job = None
    error = error_document("CANCELLED", "job was cancelled on request before it started; it will not be run",
                           phase="queue")
    job_id = job.job_id if job else queued.job_id
    result = result_document(job_id=job_id, status="cancelled", worker_id=queued.worker_id, job=job,
                             error=error)
    if job is None:
        result["operation"] = queued.operation
        result["execution_summary"]["attempt"] = queued.attempt or 1
    return result, reason_document(queued.name, job_id, "cancelled", queued.worker_id, error)
