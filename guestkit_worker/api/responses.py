"""The REST API's JSON answers: ``{"success": true, "data": ...}`` or
``{"success": false, "error": CODE, "message": ..., "details": {"field": ...}}``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

Headers = Sequence[tuple[str, str]]


class ApiError(Exception):
    """An error answer: HTTP status, error code, message, optional field and extra headers."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 details: dict | None = None, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        if field is not None:
            self.details["field"] = field
        self.headers = list(headers)


class Answer:
    """An answer: status, a JSON body (bytes are sent as they are), extra headers."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: Any, headers: Headers = ()) -> None:
        self.status = status
        self.body = body
        self.headers = list(headers)


def ok(data: Any, status: int = 200, headers: Headers = ()) -> Answer:
    """``{"success": true, "data": data}``."""
    return Answer(status, {"success": True, "data": data}, headers)


def error_body(err: ApiError) -> dict:
    body = {"success": False, "error": err.code, "message": err.message}
    if err.details:
        body["details"] = err.details
    return body


_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} Unknown"


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, default=str).encode("utf-8") + b"\n"


def busy(code: str, message: str, retry_after: int = 1) -> ApiError:
    """503 with Retry-After: a limit was reached; nothing was done."""
    return ApiError(503, code, message, headers=[("Retry-After", str(retry_after))])
