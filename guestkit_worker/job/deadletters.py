"""Why the bytes of a dead letter cannot become a job, in the reason codes every transport
and the ``dead`` command and endpoints share: ``too_large``, ``not_json`` and ``no_job_id``.
A dead letter whose bytes pass may be queued again (requeue); one that fails is refused with
the reason, since a worker would only move it aside again."""

from __future__ import annotations

from .decode import decode_job_bytes
from .errors import JobFileError
from .protocol import peek_job_id

#: reason codes of bytes that can never be a job (each refuses a requeue)
UNRUNNABLE_REASONS = ("no_job_field", "too_large", "not_json", "no_job_id")


def unrunnable(raw: bytes | None, max_bytes: int) -> tuple[str, str] | None:
    """(reason, detail) when ``raw`` cannot become a job for workers reading at most
    ``max_bytes`` (--max-job-size); None when it can (it is a JSON object with a usable
    job_id; whether the rest validates is for a worker to say, with a result)."""
    if raw is None:
        return "no_job_field", "the entry has no job document"
    if len(raw) > max_bytes:
        return "too_large", (f"{len(raw)} bytes, larger than the limit of {max_bytes} bytes "
                             "(--max-job-size)")
    try:
        doc = decode_job_bytes(raw, max_bytes)
    except JobFileError as exc:
        return "not_json", str(exc)
    if peek_job_id(doc) is None:
        return "no_job_id", "the job document has no usable job_id"
    return None


def job_id_of(raw: bytes | None, max_bytes: int) -> str | None:
    """The usable job_id of ``raw``, or None (unreadable, too large, no id)."""
    if raw is None or len(raw) > max_bytes:
        return None
    try:
        return peek_job_id(decode_job_bytes(raw, max_bytes))
    except JobFileError:
        return None


def rejection_reason(error: object, job_id: str | None) -> str:
    """The reason code of a job file a worker rejected without a result, from the error object
    it kept (:func:`guestkit_worker.job.outcomes.rejection_error`): ``duplicate_job_id``,
    ``too_large``, ``unreadable`` (not a regular file, no permission), ``not_json``,
    ``no_job_id``, else ``rejected``."""
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    if code == "DUPLICATE_JOB_ID":
        return "duplicate_job_id"
    if code == JobFileError.code:
        if "larger than the limit" in message:
            return "too_large"
        if any(word in message for word in _UNREADABLE):
            return "unreadable"
        return "not_json"
    if code is not None and job_id is None:
        return "no_job_id"
    return "rejected"


#: words of the file transport's refusals of a job file it would not open or read
_UNREADABLE = ("regular file", "symbolic link", "cannot stat", "cannot open", "cannot read",
               "permission denied", "bytes long")
