"""What the API checks before a job document is queued: the verdicts (codes, field-named
messages) the worker itself would give when it takes the job."""

from __future__ import annotations

from typing import Any

from ..job.admission import check_job
from ..job.decode import decode_job_bytes
from ..job.errors import HandlerError, JobValidationError
from ..job.protocol import Job, validate_document


def check_submission(raw: bytes, registry: Any, max_bytes: int) -> Job:
    """Decode and validate a job document and its payload against the handler that would run
    it (with the worker's path policy, already configured in ``registry``).

    Raises :class:`JobFileError` when the bytes are not a JSON object, and
    :class:`JobValidationError` (``code`` and ``field`` set) when the worker would reject it.
    """
    job = validate_document(decode_job_bytes(raw, max_bytes))
    try:
        check_job(job, registry)  # the worker's own admission checks
    except HandlerError as err:  # e.g. PATH_NOT_ALLOWED
        raise JobValidationError((err.details or {}).get("field") if isinstance(err.details, dict) else None,
                                 err.message, code=err.code) from None
    return job
