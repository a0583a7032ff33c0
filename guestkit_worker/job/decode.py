"""Decoding a job file's bytes into a JSON object: size limit first, then UTF-8 without a
byte order mark, JSON, no NaN or infinity anywhere, an object at the top; each failure is a
:class:`~guestkit_worker.job.errors.JobFileError` saying what is wrong (validation of the
document is :mod:`guestkit_worker.job.protocol`)."""

import json
import math
import threading
from typing import Any

from ..settings.defaults import DEFAULT_MAX_JOB_BYTES
from .errors import JobFileError


def json_type_name(value: Any) -> str:
    """The JSON name of a decoded value's type (object, array, string, ...)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def decode_job_bytes(raw: bytes, max_bytes: int = DEFAULT_MAX_JOB_BYTES) -> dict[str, Any]:
    """Turn a job file's bytes into a dict, or raise JobFileError saying what is wrong."""
    if len(raw) > max_bytes:
        raise JobFileError("file", f"larger than the limit of {max_bytes} bytes (--max-job-size)")
    if not raw.strip():
        raise JobFileError("file", "empty file")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise JobFileError("file", "starts with a UTF-8 byte order mark; write JSON without a BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobFileError("file", f"not valid UTF-8 (byte offset {exc.start})") from None
    _seen.nonfinite = False
    try:
        doc = _DECODER.decode(text)
    except RecursionError:
        raise JobFileError("file", "JSON nested too deeply") from None
    except ValueError as exc:
        raise JobFileError("file", f"invalid JSON: {exc}") from None
    if _seen.nonfinite:
        where, what = _find_nonfinite(doc)
        raise JobFileError(where, f"{what} is not a JSON number (NaN and infinities are refused anywhere "
                                  "in a job)")
    if not isinstance(doc, dict):
        raise JobFileError("file", f"must hold a JSON object, got {json_type_name(doc)}")
    return doc


# Python's json accepts NaN, Infinity and -Infinity (and turns 1e999 into inf), which no
# JSON peer can read back and which a result written with allow_nan=False cannot hold.  The
# decoder's hooks run only for those literals and for floats; they leave a marker in the
# document and a per-thread flag, so a valid document costs no extra walk.
_seen = threading.local()


class _NonFinite(str):
    """Stands in the decoded document for a non-finite number (its source text)."""


def _constant(text):
    _seen.nonfinite = True
    return _NonFinite(text)


def _float(text):
    value = float(text)
    if math.isfinite(value):
        return value
    _seen.nonfinite = True
    return _NonFinite(text)


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def _find_nonfinite(node, path=""):
    """(field path, source text) of the first non-finite number in a decoded document."""
    if isinstance(node, _NonFinite):
        return path or "file", str(node)
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        found = _find_nonfinite(value, sub)
        if found:
            return found
    return None
