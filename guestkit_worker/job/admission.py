"""Admission: whether a job document may run here, with the verdict (error code, field-named
message) a job is rejected with.  One set of checks for the worker, the ``validate`` and
``submit`` commands and the REST API, so they never disagree."""

from __future__ import annotations

from typing import Any

from .decode import decode_job_bytes
from .errors import HandlerError, JobValidationError
from .protocol import Job, pool_accepts, validate_document

#: Fields a handler's own validation error keeps as they are (others are under payload.data).
_TOP_FIELDS = ("payload", "operation", "constraints", "execution", "job_id")


def routed_elsewhere(doc: Any, pool: str, worker_id: str) -> bool:
    """True when the document is meant for another pool or pinned to another worker (it is
    left in the queue, not rejected)."""
    if not pool_accepts(doc, pool):
        return True
    routing = doc.get("routing") if isinstance(doc, dict) else None
    pinned = routing.get("worker_id") if isinstance(routing, dict) else None
    return isinstance(pinned, str) and pinned != worker_id


def check_job(job: Job, registry: Any) -> Any:
    """The handler that will run a valid job document; JobValidationError (code and field set)
    or HandlerError (e.g. PATH_NOT_ALLOWED) when this worker must refuse it."""
    handler = registry.get(job.operation)
    if handler is None:
        raise JobValidationError("operation", f"no handler for operation {job.operation!r}; this worker "
                                 f"serves {', '.join(registry.operations)}", code="HANDLER_NOT_FOUND")
    if job.payload_type not in handler.payload_types:
        raise JobValidationError("payload.type", f"{job.payload_type!r} is not accepted by {job.operation} "
                                 f"(accepts {', '.join(handler.payload_types)})",
                                 code="PAYLOAD_TYPE_MISMATCH")
    missing = [c for c in job.constraints.get("required_capabilities") or () if registry.get(c) is None]
    if missing:
        raise JobValidationError("constraints.required_capabilities",
                                 f"this worker does not serve {', '.join(missing)}",
                                 code="CAPABILITY_MISMATCH")
    if job.expired():
        deadline = job.doc["execution"]["deadline"]  # as the document says it
        raise JobValidationError("execution.deadline", f"deadline {deadline} has passed; the job was not run",
                                 code="DEADLINE_EXCEEDED")
    if not isinstance(job.data, dict):
        raise JobValidationError("payload.data", "must be an object")
    try:
        handler.validate(job.data)
    except JobValidationError as err:
        if err.field and not err.field.startswith(_TOP_FIELDS):
            raise JobValidationError(f"payload.data.{err.field}", err.reason, code=err.code) from None
        raise
    return handler


def problems(raw: bytes, registry: Any, max_bytes: int) -> tuple[list, Job | None]:
    """For ``validate`` and ``submit``: every protocol problem of the document, else the
    admission verdict; ([], job) when the worker would run it."""
    try:
        doc = decode_job_bytes(raw, max_bytes)
        job = validate_document(doc)
    except JobValidationError as exc:
        return [str(p) for p in getattr(exc, "problems", None) or [exc]], None
    try:
        check_job(job, registry)
    except (JobValidationError, HandlerError) as exc:
        return [str(exc)], job
    return [], job
