"""The job endpoints of the REST API, on top of a :class:`~guestkit_worker.transports.base.Transport`.

Each method takes what the router parsed and returns an :class:`Answer` or raises an
:class:`ApiError`; none of them knows about HTTP plumbing, tokens or connections.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Callable

from ..job.errors import JobFileError, JobValidationError
from ..job.outcomes import cancelled_before_start
from ..job.protocol import Job, check_job_id
from ..job.states import FINAL_STATUSES, JOB_STATUSES
from ..settings.defaults import DEFAULT_API_MAX_WAITS
from ..transports.base import InvalidPageToken, JobTooLarge, OutcomeUnknown, Transport
from .limits import DEFAULT_PAGE, MAX_PAGE, MAX_PROGRESS_AFTER, MAX_WAIT
from .responses import Answer, ApiError, busy, ok

log = logging.getLogger(__name__)


JOBS_PATH = "/api/v1/jobs"


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"no job with id {job_id}", field="job_id")


def _bad_param(name: str, reason: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER", f"{name}: {reason}", field=name)


def _number(query: Mapping[str, str], name: str, kind: type, *, low: float, high: float | None = None):
    text = query.get(name)
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise _bad_param(name, f"expected a number, got {text[:40]!r}") from None
    if value != value or value < low or (high is not None and value > high):  # NaN fails too
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise _bad_param(name, f"must be {bound}, got {text[:40]}")
    return value


class JobsApi:
    """``transport``: where jobs go and results come from; ``check_submission(raw) -> Job``
    checks a document as the worker would (:func:`.precheck.check_submission`); ``max_waits``
    caps concurrent ``?wait=`` requests."""

    def __init__(self, transport: Transport, check_submission: Callable[[bytes], Job], *,
                 max_waits: int = DEFAULT_API_MAX_WAITS,
                 on_wait: Callable[[int], None] = lambda delta: None) -> None:
        self.transport = transport
        self.check_submission = check_submission
        self._wait_slots = threading.BoundedSemaphore(max_waits)
        self._on_wait = on_wait

    # -- POST /api/v1/jobs -------------------------------------------------------------
    def submit(self, raw: bytes) -> Answer:
        try:
            job = self.check_submission(raw)
        except JobFileError as exc:
            raise ApiError(400, "INVALID_JSON", f"the body is not a JSON job document: {exc.reason}",
                           field="body") from None
        except JobValidationError as exc:
            problems = [str(p) for p in getattr(exc, "problems", ())]
            raise ApiError(422, exc.code, str(exc), field=exc.field,
                           details={"problems": problems} if len(problems) > 1 else None) from None
        try:
            receipt = self.transport.submit(job.doc, raw)
        except OutcomeUnknown as exc:
            raise ApiError(504, "OUTCOME_UNKNOWN", f"job {job.job_id}: the job store took the request but "
                           "its answer did not come back, so the job may or may not exist; retry with the "
                           "same document: it is never run twice", field="job_id",
                           headers=[("Retry-After", "5")]) from exc
        except JobTooLarge as exc:  # the workers would refuse it unread: never answer 202 for it
            raise ApiError(413, "JOB_TOO_LARGE", str(exc), field="body",
                           details={"limit": exc.limit}) from None
        location = f"{JOBS_PATH}/{receipt.job_id}"
        if receipt.outcome == "created":
            log.info("job %s (%s) submitted over the API", receipt.job_id, job.operation)
            return ok({"job_id": receipt.job_id, "status": "pending"}, 202, [("Location", location)])
        if receipt.outcome == "exists":
            return ok({"job_id": receipt.job_id, "status": receipt.status}, 200, [("Location", location)])
        raise ApiError(409, "JOB_ID_CONFLICT", f"job {receipt.job_id} was already submitted with a "
                       "different document", field="job_id")

    # -- GET /api/v1/jobs/ID -----------------------------------------------------------
    def _status(self, job_id: str):
        try:
            check_job_id(job_id)
        except JobValidationError:
            raise _not_found(job_id[:130]) from None
        status = self.transport.job_status(job_id)
        if status is None:
            raise _not_found(job_id)
        return status

    def status(self, job_id: str) -> Answer:
        return ok(self._status(job_id).to_dict())

    # -- GET /api/v1/jobs/ID/result[?wait=S] -------------------------------------------
    def result(self, job_id: str, query: Mapping[str, str]) -> Answer:
        wait = _number(query, "wait", float, low=0)
        status = self._status(job_id)
        result = None
        if status.status in FINAL_STATUSES:
            result = self.transport.get_result(job_id)
        elif wait:
            result = self._wait(job_id, min(wait, MAX_WAIT))
        if result is not None and result.get("status") in FINAL_STATUSES:
            return ok(result)
        current = self.transport.job_status(job_id) or status
        return ok({"job_id": job_id, "status": current.status}, 202)

    def _wait(self, job_id: str, seconds: float) -> dict | None:
        if not self._wait_slots.acquire(blocking=False):
            raise busy("TOO_MANY_WAITS", "too many requests are waiting for results; retry later "
                       "or ask again without wait")
        self._on_wait(1)
        try:
            return self.transport.wait_result(job_id, seconds)
        finally:
            self._on_wait(-1)
            self._wait_slots.release()

    # -- GET /api/v1/jobs/ID/progress[?after=N] ----------------------------------------
    def progress(self, job_id: str, query: Mapping[str, str]) -> Answer:
        after = _number(query, "after", int, low=0, high=MAX_PROGRESS_AFTER) or 0
        self._status(job_id)
        events = self.transport.read_progress(job_id, after)
        return ok({"job_id": job_id, "after": after, "events": events, "next": after + len(events)})

    # -- DELETE /api/v1/jobs/ID --------------------------------------------------------
    def cancel(self, job_id: str) -> Answer:
        status = self._status(job_id)
        verdict = self.transport.cancel(job_id, cancelled_before_start)
        if verdict == "cancelled":
            log.info("job %s cancelled over the API before it ran", job_id)
            return ok({"job_id": job_id, "status": "cancelled"})
        if verdict == "cancelling":
            log.info("job %s: cancel requested over the API while it runs", job_id)
            return ok({"job_id": job_id, "status": "running", "cancel_requested": True}, 202)
        if verdict == "not_found":
            raise _not_found(job_id)
        current = self.transport.job_status(job_id) or status
        if verdict == "finished":
            raise ApiError(409, "JOB_FINISHED", f"job {job_id} already ended ({current.status})",
                           details={"status": current.status})
        raise ApiError(409, "NOT_CANCELLABLE", f"job {job_id} is running and its execution.cancellable "
                       "is false", field="execution.cancellable", details={"status": current.status})

    # -- GET /api/v1/jobs?status=&operation=&limit=&page_token= --------------------------
    def list(self, query: Mapping[str, str]) -> Answer:
        status = query.get("status") or None
        if status is not None and status not in JOB_STATUSES:
            raise _bad_param("status", f"must be one of {', '.join(JOB_STATUSES)}, got {status[:40]!r}")
        limit = _number(query, "limit", int, low=1, high=MAX_PAGE) or DEFAULT_PAGE
        token = query.get("page_token") or None
        try:
            page = self.transport.list_jobs(status=status, operation=query.get("operation") or None,
                                            limit=limit, page_token=token)
        except ValueError:  # InvalidPageToken, or a plug-in transport's own refusal of the token
            if token is None:
                raise
            raise _bad_param("page_token", str(InvalidPageToken())) from None
        return ok({"jobs": [job.to_dict() for job in page.jobs], "next_page_token": page.next_page_token})
