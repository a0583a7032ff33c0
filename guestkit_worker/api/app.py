"""The REST API's WSGI application: routing by template, tokens, body limits, JSON answers,
and one metric sample per request labelled by the route template.

Order of checks for every request: the route (404), the token (401 with
``WWW-Authenticate``), the method (405 with ``Allow``), then for a body: its media type
(415), its declared length (411, or 413 before a byte of it is read), and the body itself.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote

from .. import PROTOCOL_VERSION
from ..http.auth import CHALLENGE, CHALLENGE_INVALID, TokenSet, bearer_token
from ..transports.base import TransportUnavailable
from .dead import DeadApi
from .jobs import JobsApi
from .metrics import ApiMetrics
from .responses import Answer, ApiError, encode, error_body, ok, status_line

log = logging.getLogger(__name__)

#: Longest query string accepted.
MAX_QUERY = 4096

_ID = r"(?P<id>[^/]{1,256})"
#: (template label, regex, {method: endpoint name})
ROUTES = (
    ("/api/v1/jobs", re.compile(r"/api/v1/jobs/?"), {"GET": "list", "POST": "submit"}),
    ("/api/v1/jobs/{id}", re.compile(rf"/api/v1/jobs/{_ID}"), {"GET": "status", "DELETE": "cancel"}),
    ("/api/v1/jobs/{id}/result", re.compile(rf"/api/v1/jobs/{_ID}/result"), {"GET": "result"}),
    ("/api/v1/jobs/{id}/progress", re.compile(rf"/api/v1/jobs/{_ID}/progress"), {"GET": "progress"}),
    ("/api/v1/dead", re.compile(r"/api/v1/dead/?"), {"GET": "dead_list"}),
    ("/api/v1/dead/{entry}", re.compile(rf"/api/v1/dead/{_ID}"),
     {"GET": "dead_show", "DELETE": "dead_purge"}),
    ("/api/v1/dead/{entry}/requeue", re.compile(rf"/api/v1/dead/{_ID}/requeue"), {"POST": "dead_requeue"}),
    ("/api/v1/capabilities", re.compile(r"/api/v1/capabilities"), {"GET": "capabilities"}),
    ("/api/v1/health", re.compile(r"/api/v1/health"), {"GET": "health"}),
    ("/api/v1/openapi.json", re.compile(r"/api/v1/openapi\.json"), {"GET": "openapi"}),
)
#: route label of requests that match no route
UNMATCHED = "unmatched"


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unescape_unreserved(match_: re.Match) -> str:
    char = chr(int(match_.group(1), 16))
    return char if char in _UNRESERVED else match_.group(0)


def request_path(environ: dict) -> str:
    """The request's path with only its escaped unreserved characters decoded (RFC 3986
    normalisation): an escaped ``/`` (``%2F``) stays inside its segment, so a job id holding
    one cannot reach another route.  Without ``RAW_URI`` (another WSGI server): PATH_INFO."""
    raw = environ.get("RAW_URI")
    if not raw:
        return environ.get("PATH_INFO", "")
    return _ESCAPE.sub(_unescape_unreserved, raw.partition("?")[0].partition("#")[0])


def match(path: str) -> tuple[str, dict[str, str] | None, dict[str, str]]:
    """(route template, path parameters or None when nothing matched, methods) for a path as
    :func:`request_path` gives it; the parameters are decoded (UTF-8)."""
    for template, pattern, methods in ROUTES:
        found = pattern.fullmatch(path)
        if found:
            return template, {k: unquote(v, errors="replace") for k, v in found.groupdict().items()}, methods
    return UNMATCHED, None, {}


@functools.lru_cache(maxsize=1)
def _openapi_bytes() -> bytes:
    """The OpenAPI document, rendered once (imported on first use: start-up stays light)."""
    from .openapi import render
    return render()


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


class ApiApp:
    """The WSGI callable.  ``jobs`` answers the job routes, ``capabilities()`` returns the
    capabilities document, ``health()`` returns ``(healthy, body)`` as for ``/health``;
    ``tokens`` None means no authentication (loopback only, enforced by the caller)."""

    def __init__(self, jobs: JobsApi, *, capabilities: Callable[[], dict],
                 health: Callable[[], tuple[bool, dict]], tokens: TokenSet | None,
                 max_body: int, metrics: ApiMetrics, dead: DeadApi | None = None) -> None:
        self.jobs = jobs
        self.dead = dead
        self.capabilities = capabilities
        self.health = health
        self.tokens = tokens
        self.max_body = max_body
        self.metrics = metrics

    def __call__(self, environ: dict, start_response: Callable) -> list:
        started = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET")
        route, params, methods = match(request_path(environ))
        try:
            answer = self._answer(environ, method, params, methods)
        except ApiError as err:
            if err.status == 504:  # the job store took a request and never answered: worth a line
                log.warning("API %s %s: %s (%s)", method, route, err.message, err.__cause__)
            answer = Answer(err.status, error_body(err), err.headers)
        except TransportUnavailable as exc:
            log.warning("API %s %s: job store unavailable: %s", method, route, exc)
            answer = self._unavailable()
        except OSError as exc:
            log.warning("API %s %s: job store error: %s", method, route, exc)
            answer = self._unavailable()
        except Exception:
            log.exception("API %s %s: unexpected error", method, route)
            answer = Answer(500, error_body(ApiError(500, "INTERNAL_ERROR", "internal error; see the "
                                                                            "worker's log")))
        body = answer.body if isinstance(answer.body, bytes) else encode(answer.body)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store")] + answer.headers
        start_response(status_line(answer.status), headers)
        self.metrics.observe(route, method, answer.status, time.monotonic() - started)
        return [body] if method != "HEAD" else []

    @staticmethod
    def _unavailable() -> Answer:
        err = ApiError(503, "TRANSPORT_UNAVAILABLE", "the job queue or result store cannot be reached "
                       "right now; nothing was changed; retry later", headers=[("Retry-After", "5")])
        return Answer(503, error_body(err), err.headers)

    def _answer(self, environ: dict, method: str, params: dict | None, methods: dict) -> Answer:
        if self.tokens is not None:
            self._authenticate(environ)
        if params is None:
            raise ApiError(404, "NOT_FOUND", "no such endpoint; see /api/v1/capabilities and the "
                           "guestkit-worker(1) man page")
        endpoint = methods.get(method)
        if endpoint is None and method == "HEAD":  # a GET's headers and length, without its body
            endpoint = methods.get("GET")
        if endpoint is None:
            allowed = list(methods) + (["HEAD"] if "GET" in methods else [])
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"{method[:16]} is not allowed here; use "
                           f"{' or '.join(allowed)}", headers=[("Allow", ", ".join(allowed))])
        query_text = environ.get("QUERY_STRING", "")
        if len(query_text) > MAX_QUERY:
            raise ApiError(414, "QUERY_TOO_LONG", f"the query string is over {MAX_QUERY} bytes")
        query = dict(parse_qsl(query_text, keep_blank_values=True))
        job_id = params.get("id")
        if endpoint == "submit":
            return self.jobs.submit(self._read_body(environ))
        if endpoint == "list":
            return self.jobs.list(query)
        if endpoint == "status":
            return self.jobs.status(job_id)
        if endpoint == "cancel":
            return self.jobs.cancel(job_id)
        if endpoint == "result":
            return self.jobs.result(job_id, query)
        if endpoint == "progress":
            return self.jobs.progress(job_id, query)
        if endpoint.startswith("dead_"):
            return self._dead(endpoint, job_id, query)
        if endpoint == "capabilities":
            return ok(self.capabilities())
        if endpoint == "openapi":
            return Answer(200, _openapi_bytes())
        healthy, body = self.health()
        return Answer(200 if healthy else 503, body)

    def _dead(self, endpoint: str, entry: str | None, query: dict) -> Answer:
        if self.dead is None:
            raise ApiError(404, "NOT_FOUND", "this API serves no dead letters")
        if endpoint == "dead_list":
            return self.dead.list(query)
        if endpoint == "dead_show":
            return self.dead.show(entry)
        if endpoint == "dead_requeue":
            return self.dead.requeue(entry)
        return self.dead.purge(entry)

    def _authenticate(self, environ: dict) -> None:
        token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        if token is not None and self.tokens.accepts(token):
            return
        if token is None:
            raise ApiError(401, "UNAUTHORIZED", "this API needs a bearer token (Authorization: Bearer "
                           "TOKEN)", headers=[("WWW-Authenticate", CHALLENGE)])
        raise ApiError(401, "UNAUTHORIZED", "the bearer token is not valid",
                       headers=[("WWW-Authenticate", CHALLENGE_INVALID)])

    def _read_body(self, environ: dict) -> bytes:
        """The request body, after its media type and declared length passed."""
        media = _media_type(environ.get("CONTENT_TYPE", ""))
        if media != "application/json":
            raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send the job document with Content-Type: "
                           f"application/json (got {media[:60] or 'none'!r})", field="Content-Type")
        if environ.get("HTTP_TRANSFER_ENCODING"):
            raise ApiError(411, "LENGTH_REQUIRED", "send the body with a Content-Length, not chunked")
        text = environ.get("CONTENT_LENGTH") or ""
        if not text.isdigit():
            raise ApiError(411, "LENGTH_REQUIRED", "a job document needs a Content-Length header")
        length = int(text)
        if length > self.max_body:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body is {length} bytes; the limit "
                           f"(--max-job-size) is {self.max_body}", field="body",
                           details={"limit": self.max_body})
        try:
            raw = environ["wsgi.input"].read(length)
        except (TimeoutError, OSError):
            raise ApiError(408, "REQUEST_TIMEOUT", "the body did not arrive in time") from None
        if len(raw) != length:
            raise ApiError(400, "INVALID_JSON", "the body ended before its Content-Length", field="body")
        return raw


def capabilities_document(*, worker_id: str, pool: str, version: str, registry: Any,
                          max_concurrent: int | None, max_job_size: int) -> Callable[[], dict]:
    """A capabilities() callable for :class:`ApiApp` (engine checks are cached by the handlers)."""

    def capabilities() -> dict:
        operations = []
        for name in registry.operations:
            try:
                available, detail = registry.get(name).engine_status()
            except Exception as exc:  # a broken probe must not break the endpoint
                available, detail = False, f"engine check raised {type(exc).__name__}"
            operations.append({"name": name, "engine_available": bool(available), "detail": detail})
        return {"worker_id": worker_id, "pool": pool, "version": version,
                "protocol_version": PROTOCOL_VERSION, "operations": operations,
                "max_concurrent_jobs": max_concurrent, "max_job_size": max_job_size}

    return capabilities
