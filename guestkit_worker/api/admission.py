"""What the API checks before a job document is queued: the verdicts (codes, field-named
messages) the worker itself would give when it takes the job."""

from __future__ import annotations

from typing import Any

from ..errors import HandlerError, JobValidationError
from ..protocol import Job, decode_job_bytes, validate_document

#: Fields a handler's own validation error keeps as they are (others are under payload.data).
_TOP_FIELDS = ("payload", "operation", "constraints", "execution", "job_id")


def admit(raw: bytes, registry: Any, max_bytes: int) -> Job:
    """Decode and validate a job document and its payload against the handler that would run
    it (with the worker's path policy, already configured in ``registry``).

    Raises :class:`JobFileError` when the bytes are not a JSON object, and
    :class:`JobValidationError` (``code`` and ``field`` set) when the worker would reject it.
    """
    job = validate_document(decode_job_bytes(raw, max_bytes))
    handler = registry.get(job.operation)
    if handler is None:
        raise JobValidationError("operation", f"no handler for operation {job.operation!r}; this "
                                 f"worker serves {', '.join(registry.operations)}", code="HANDLER_NOT_FOUND")
    if job.payload_type not in handler.payload_types:
        raise JobValidationError("payload.type", f"{job.payload_type!r} is not accepted by {job.operation} "
                                 f"(accepts {', '.join(handler.payload_types)})", code="PAYLOAD_TYPE_MISMATCH")
    missing = [c for c in job.constraints.get("required_capabilities") or () if registry.get(c) is None]
    if missing:
        raise JobValidationError("constraints.required_capabilities",
                                 f"this worker does not serve {', '.join(missing)}", code="CAPABILITY_MISMATCH")
    if job.expired():
        raise JobValidationError("execution.deadline", "the deadline has passed", code="DEADLINE_EXCEEDED")
    if not isinstance(job.data, dict):
        raise JobValidationError("payload.data", "must be an object")
    try:
        handler.validate(job.data)
    except JobValidationError as err:
        if err.field and not err.field.startswith(_TOP_FIELDS):
            raise JobValidationError(f"payload.data.{err.field}", err.reason, code=err.code) from None
        raise
    except HandlerError as err:  # e.g. PATH_NOT_ALLOWED
        raise JobValidationError((err.details or {}).get("field") if isinstance(err.details, dict) else None,
                                 err.message, code=err.code) from None
    return job
