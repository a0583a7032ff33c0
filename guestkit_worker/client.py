"""A producer's client of the guestkit-worker REST API (``--api-addr``), standard library only.

Submit a job and wait for its result::

    from guestkit_worker.client import Client

    client = Client("http://127.0.0.1:8080", token="TOKEN")
    job = client.submit({"version": "1.0", "job_id": "hello-0001", "created_at": "2026-11-01T09:00:00Z",
                         "kind": "VMOperation", "operation": "system.echo",
                         "payload": {"type": "system.echo.v1", "data": {"greeting": "hi"}}})
    print(client.result(job.job_id, wait=60)["status"])

Each call is one request on its own connection (http or https, a bearer token, a CA file and
a client certificate); ``result(..., wait=S)`` asks again in steps of at most 60 s (what the
API honours) until the job ends or S have passed, and pauses while the API is busy.  Every
refusal raises a :class:`ClientError` naming what went wrong; the API's contract is its
OpenAPI document (``GET /api/v1/openapi.json``, ``docs/openapi.json``).

Errors::

    ClientError
    ├── Unreachable          no answer (connection, TLS, timeout) or one without JSON
    ├── ClientConfigError    a TLS file that cannot be loaded
    │   └── BadUrl           not a base URL
    │       └── NotAnApi     the base URL answers 404 where the API has a route
    ├── NotFinished          result(): the job has not ended (yet)
    └── ApiError             the API answered with an error; status, code, message, field
        ├── Invalid          400, 411, 413, 414, 415, 422: the request or document was refused
        ├── Unauthorized     401: no token, or not one of --api-token-file
        ├── NotFound         404: no job with this id
        ├── Conflict         409: job_id holds another document, or the job cannot be cancelled
        ├── Unavailable      503 (or another 5xx): the job store is unreachable or busy; retry later
        └── OutcomeUnknown   504: the submission may or may not exist; submit the same document again
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import Any, Callable, NamedTuple, TypedDict
from urllib.parse import quote, urlencode, urlsplit

__all__ = ["Client", "Submission", "Reply", "JobStatus", "Page", "ClientError", "Unreachable",
           "ClientConfigError", "BadUrl", "NotAnApi", "NotFinished", "ApiError", "Invalid", "Unauthorized",
           "NotFound", "Conflict", "Unavailable", "OutcomeUnknown", "error_for", "poll_result", "read_token"]

JOBS_PATH = "/api/v1/jobs"
DEAD_PATH = "/api/v1/dead"
#: Longest single ``?wait=`` the API honours, in seconds.
WAIT_STEP = 60.0
#: ``error`` codes of the API's 503 answers that mean "too many clients now; retry".
BUSY_CODES = ("TOO_MANY_WAITS", "TOO_MANY_CONNECTIONS")
#: What the refusal of a base URL ends with.
BASE_URL_HINT = "give the API's base URL, e.g. http://127.0.0.1:8080 or https://host:8443"
#: Failures that a busy server causes (an answer lost to a reset, a connection closed without
#: an answer, a TLS connection refused before its handshake): worth asking again.
_TRANSIENT = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)


# -- errors ------------------------------------------------------------------------------------

class ClientError(Exception):
    """Every error this module raises on purpose."""


class Unreachable(ClientError):
    """No answer (connection, TLS, timeout) or an answer that is not JSON.

    Attributes:
        transient: True when a busy server is the likely cause (the answer lost to a reset, a
            connection closed without an answer): asking again after a pause may succeed.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ClientConfigError(ClientError, ValueError):
    """The base URL is not one, or a TLS file cannot be loaded; asking again cannot help."""


class BadUrl(ClientConfigError):
    """The base URL is not one (its message starts with the URL, quoted)."""


class NotAnApi(BadUrl):
    """A 404 that is not the API's "no such job": the base URL's path is not a worker's API."""


class NotFinished(ClientError):
    """``result()``: the job has not ended within the wait.  ``job_status`` is its status."""

    def __init__(self, job_id: str, job_status: str) -> None:
        super().__init__(f"{job_id}: not finished ({job_status})")
        self.job_id = job_id
        self.job_status = job_status


class ApiError(ClientError):
    """The API answered with an error.

    Attributes:
        status: The HTTP status.
        code: The API's error code (``INVALID_JOB``, ``NOT_FOUND``, ``JOB_ID_CONFLICT``...).
        message: Its one-line message, naming the field and the fix.
        field: The field, parameter or header at fault, when the API named one.
        body: The whole decoded answer.
    """

    def __init__(self, status: int, body: Any) -> None:
        body = body if isinstance(body, dict) else {}
        self.status = status
        self.code = str(body.get("error") or "ERROR")
        self.message = str(body.get("message") or f"HTTP {status}")
        details = body.get("details")
        self.field = details.get("field") if isinstance(details, dict) else None
        self.body = body
        super().__init__(f"{self.code}: {self.message}")


class Invalid(ApiError):
    """400, 411, 413, 414, 415 or 422: the request or the job document was refused."""


class Unauthorized(ApiError):
    """401: no bearer token, or one the API does not accept."""


class NotFound(ApiError):
    """404: no job with this id."""


class Conflict(ApiError):
    """409: the job id holds another document, or the job ended or is not cancellable."""


class Unavailable(ApiError):
    """503 (or another 5xx): nothing was changed; ``retry_after`` seconds is a good pause."""

    @property
    def busy(self) -> bool:
        """True when a bound was reached (too many waiting clients or connections)."""
        return self.code in BUSY_CODES

    @property
    def retry_after(self) -> float:
        return 1.0 if self.busy else 5.0


class OutcomeUnknown(ApiError):
    """504 ``OUTCOME_UNKNOWN``: the job store took the submission but its answer was lost; the
    job may or may not exist.  Submit the same document again: it never runs twice."""


_BY_STATUS: dict[int, type[ApiError]] = {400: Invalid, 411: Invalid, 413: Invalid, 414: Invalid, 415: Invalid,
                                         422: Invalid, 401: Unauthorized, 404: NotFound, 409: Conflict}


def error_for(status: int, body: Any) -> ApiError:
    """The typed error of an error answer (``status`` >= 400, its decoded JSON ``body``)."""
    if status == 504 and isinstance(body, dict) and body.get("error") == "OUTCOME_UNKNOWN":
        return OutcomeUnknown(status, body)
    kind = _BY_STATUS.get(status) or (Unavailable if status >= 500 else ApiError)
    return kind(status, body)


# -- values --------------------------------------------------------------------------------------

class Reply(NamedTuple):
    """One answer: HTTP status and decoded JSON body."""

    status: int
    body: Any


class JobStatus(TypedDict):
    """A job as ``status()`` and ``list()`` show it (times are RFC 3339 UTC, None until known)."""

    job_id: str
    status: str  #: pending, running, completed, failed, timeout, cancelled or rejected
    operation: str | None
    attempt: int | None
    worker_id: str | None
    submitted_at: str | None
    started_at: str | None
    completed_at: str | None
    error: dict | None


class Page(TypedDict):
    """One page of ``list()``: its jobs, newest first, and the token of the next (None: last)."""

    jobs: list[JobStatus]
    next_page_token: str | None


class Submission(NamedTuple):
    """What ``submit()`` did: ``created`` False when the same document was submitted before
    (no second job; ``status`` is its current status)."""

    job_id: str
    status: str
    created: bool


# -- helpers -------------------------------------------------------------------------------------

def read_token(path: str) -> str:
    """The first token of a token file (one a line; blank lines and ``#`` comments skipped).

    Raises:
        ClientConfigError: The file cannot be read or holds no token.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh.read(65537).splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    tokens = [line for line in lines if line and not line.startswith("#")]
    if not tokens:
        raise ClientConfigError(f"token file {path}: holds no token")
    return tokens[0]


def _bad_url(url: str, problem: str, kind: type[BadUrl] = BadUrl) -> BadUrl:
    shown = repr(url[:200] + ("..." if len(url) > 200 else ""))
    return kind(f"{shown}: {problem}; {BASE_URL_HINT}")


def parse_base_url(url: str) -> tuple[str, str, int, str]:
    """Split a base URL, ``http[s]://HOST[:PORT][/PREFIX]``, into (scheme, host, port, prefix):
    the port defaults to 80 or 443, the prefix has no trailing ``/``.

    Raises:
        BadUrl: Anything else (another scheme, no host, port 0 or over 65535, a
            query, fragment, credentials, a space or control character), in one line.
    """
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise _bad_url(url, "it contains a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # an unclosed [IPv6 bracket, a port that is no number or over 65535
        raise _bad_url(url, f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad_url(url, "expected http://HOST:PORT or https://HOST:PORT")
    if port == 0:
        raise _bad_url(url, "the port must be from 1 to 65535")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise _bad_url(url, "a base URL has no ?query or #fragment")
    if parts.username is not None or parts.password is not None:
        raise _bad_url(url, "credentials in the URL are not sent (give the token instead)")
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port or default_port, parts.path.rstrip("/")


def _is_job_not_found(body: Any) -> bool:
    """Whether a 404's body is the API's "no such job" or "no such dead letter" (its error
    naming the job_id or entry field)."""
    if not isinstance(body, dict) or body.get("success") is not False:
        return False
    details = body.get("details")
    return body.get("error") in ("NOT_FOUND", "JOB_NOT_FOUND") and isinstance(details, dict) \
        and details.get("field") in ("job_id", "entry")


def _busy(reply: Reply) -> bool:
    return reply.status == 503 and isinstance(reply.body, dict) and reply.body.get("error") in BUSY_CODES


def poll_result(ask: Callable[[float], tuple[int, Any]], seconds: float) -> Reply:
    """Ask for a result (``ask(wait)`` answers ``(status, body)``) until it is final (not 202)
    or ``seconds`` have passed, each ask waiting at most :data:`WAIT_STEP`.  A busy API (503
    ``TOO_MANY_*``) and an answer a busy server lost (:class:`Unreachable` ``transient``) are
    asked again after a second's pause while more than a second is left."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        try:
            reply = Reply(*ask(max(0.0, min(WAIT_STEP, left))))
        except Unreachable as exc:
            if not exc.transient or left <= 1:
                raise
            time.sleep(1.0)
            continue
        if _busy(reply) and left > 1:
            time.sleep(1.0)
            continue
        if reply.status != 202 or left <= WAIT_STEP:
            return reply


# -- the client ----------------------------------------------------------------------------------

class Client:
    """A client of one worker's REST API: one request per call, one connection per request."""

    def __init__(self, url: str, *, token: str | None = None, ca: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 timeout: float = 30.0) -> None:
        """Check the base URL and, for https, load the TLS files; nothing is sent yet.

        Args:
            url: The API's base URL, like ``http://127.0.0.1:8080`` or ``https://host:8443``.
            token: The bearer token sent with every request (one of ``--api-token-file``).
            ca: CA certificates (PEM file) to verify an https server (default: the system's).
            client_cert: A client certificate (PEM) for an API run with ``--api-client-ca``.
            client_key: Its private key (default: in ``client_cert``).
            timeout: Seconds one request may take (a result's wait is added to it).

        Raises:
            BadUrl: The URL is not a base URL.
            ClientConfigError: A TLS file cannot be loaded.
        """
        self.scheme, self.host, self.port, self.prefix = parse_base_url(url)
        self.url = url
        self.token = token
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.scheme == "https":
            try:
                self._context = ssl.create_default_context(cafile=ca)
                if client_cert:
                    self._context.load_cert_chain(client_cert, client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ClientConfigError(f"cannot load the API client's TLS files: "
                                        f"{getattr(exc, 'strerror', None) or exc}") from None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- one request -----------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, *,
                timeout: float | None = None) -> Reply:
        """Send one request (``path`` below the base URL, with its query) and decode its JSON.

        Returns:
            The answer, whatever its status.

        Raises:
            Unreachable: No answer, or one without JSON.
            NotAnApi: A 404 that is not the API's "no such job".
        """
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        status, data = self._exchange(method, self.prefix + path, body, headers, timeout or self.timeout)
        try:
            decoded = json.loads(data)
        except (ValueError, RecursionError):
            decoded = None
        if status == 404 and not _is_job_not_found(decoded):
            where = (self.prefix + path).partition("?")[0]
            raise _bad_url(self.url, f"not a guestkit-worker API (404 for {where[:300]})", NotAnApi)
        if decoded is None:
            raise Unreachable(f"{self._origin()}: answered {status} without JSON")
        return Reply(status, decoded)

    def _origin(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def _exchange(self, method: str, target: str, body: bytes | None, headers: dict,
                  timeout: float) -> tuple[int, bytes]:
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{self._origin()}: {exc}", transient=isinstance(exc, _TRANSIENT)) from None
        finally:
            conn.close()

    def _data(self, reply: Reply, *ok: int) -> Any:
        if reply.status not in ok:
            raise error_for(reply.status, reply.body)
        return reply.body.get("data") if isinstance(reply.body, dict) else None

    @staticmethod
    def job_path(job_id: str, tail: str = "") -> str:
        """``/api/v1/jobs/JOB_ID`` + ``tail``; the id is escaped whole (a ``/`` stays in it)."""
        return f"{JOBS_PATH}/{quote(job_id, safe='')}{tail}"

    # -- the job calls ---------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any] | bytes | str) -> Submission:
        """Queue a job document (a mapping, or its JSON text or bytes as they are).

        Returns:
            The job id and status; ``created`` False when the same document was submitted
            before (then nothing new was queued).

        Raises:
            Invalid: Not a job document the worker would run (``field`` names the field).
            Conflict: The job id holds another document.
            OutcomeUnknown: The answer was lost; submit the same document again.
        """
        raw = doc if isinstance(doc, bytes) else \
            doc.encode("utf-8") if isinstance(doc, str) else json.dumps(doc).encode("utf-8")
        reply = self.request("POST", JOBS_PATH, raw)
        data = self._data(reply, 200, 202)
        return Submission(data["job_id"], data["status"], reply.status == 202)

    def status(self, job_id: str) -> JobStatus:
        """A job's status: ``job_id``, ``status``, ``operation``, ``attempt``, ``worker_id``,
        ``submitted_at``, ``started_at``, ``completed_at``, ``error``.  NotFound when unknown."""
        return self._data(self.request("GET", self.job_path(job_id)), 200)

    def result(self, job_id: str, wait: float = 0) -> dict:
        """A finished job's result document, waiting up to ``wait`` seconds for it to end.

        Raises:
            NotFinished: It has not ended within ``wait`` (its status in ``job_status``).
            NotFound: No such job.
            Unavailable: Still busy or unreachable when the wait ran out.
        """
        def ask(step: float) -> Reply:
            query = f"?wait={step:g}" if step > 0 else ""
            return self.request("GET", self.job_path(job_id, "/result") + query, timeout=self.timeout + step)

        reply = poll_result(ask, wait) if wait > 0 else ask(0)
        data = self._data(reply, 200, 202)
        if reply.status == 202:
            raise NotFinished(job_id, data["status"])
        return data

    def cancel(self, job_id: str) -> dict:
        """Cancel a job: a waiting one never runs (``status`` ``cancelled``); a running
        cancellable one is told to stop (``status`` ``running``, ``cancel_requested`` True).

        Raises:
            Conflict: It already ended, or it runs and is not cancellable.
            NotFound: No such job.
        """
        return self._data(self.request("DELETE", self.job_path(job_id)), 200, 202)

    def list(self, *, status: str | None = None, operation: str | None = None,
             limit: int | None = None, page_token: str | None = None) -> Page:
        """One page of jobs, newest first: ``{"jobs": [status, ...], "next_page_token": ...}``
        (None on the last page).  Invalid names a parameter it refused."""
        query = {k: v for k, v in (("status", status), ("operation", operation), ("limit", limit),
                                   ("page_token", page_token)) if v is not None}
        return self._data(self.request("GET", JOBS_PATH + (f"?{urlencode(query)}" if query else "")), 200)

    def jobs(self, *, status: str | None = None, operation: str | None = None) -> Iterator[JobStatus]:
        """Every job (newest first), page after page."""
        token = None
        while True:
            page = self.list(status=status, operation=operation, page_token=token)
            yield from page["jobs"]
            token = page.get("next_page_token")
            if not token:
                return

    def progress(self, job_id: str, after: int = 0) -> dict:
        """A job's progress events after the ``after``-th: ``{"events": [...], "next": N}``."""
        return self._data(self.request("GET", self.job_path(job_id, f"/progress?after={int(after)}")), 200)

    def capabilities(self) -> dict:
        """The worker's id, pool, version and operations (and whether their engine is installed)."""
        return self._data(self.request("GET", "/api/v1/capabilities"), 200)

    # -- dead letters ------------------------------------------------------------------------
    @staticmethod
    def dead_path(entry: str, tail: str = "") -> str:
        """``/api/v1/dead/ENTRY`` + ``tail``; the entry is escaped whole."""
        return f"{DEAD_PATH}/{quote(entry, safe='')}{tail}"

    def dead_list(self, *, limit: int | None = None, page_token: str | None = None) -> dict:
        """One page of dead letters, newest first: ``{"entries": [...], "next_page_token": ...}``,
        each with ``entry``, ``reason``, ``detail``, ``job_id`` and ``dead_at``."""
        query = {k: v for k, v in (("limit", limit), ("page_token", page_token)) if v is not None}
        return self._data(self.request("GET", DEAD_PATH + (f"?{urlencode(query)}" if query else "")), 200)

    def dead_letters(self) -> Iterator[dict]:
        """Every dead letter (newest first), page after page."""
        token = None
        while True:
            page = self.dead_list(page_token=token)
            yield from page["entries"]
            token = page.get("next_page_token")
            if not token:
                return

    def dead_show(self, entry: str) -> dict:
        """One dead letter with ``size`` and its ``document`` as text.  NotFound when unknown."""
        return self._data(self.request("GET", self.dead_path(entry)), 200)

    def dead_requeue(self, entry: str) -> dict:
        """Queue a dead letter's original document again: ``{"entry", "job_id", "status"}``.

        Raises:
            Invalid: 422 ``NOT_REQUEUEABLE``: its document still cannot run (the reason in
                ``body["details"]["reason"]``).
            Conflict: 409 ``NOT_REQUEUEABLE``: its job id belongs to another job.
            NotFound: No such dead letter.
        """
        return self._data(self.request("POST", self.dead_path(entry, "/requeue"), b""), 200)

    def dead_purge(self, entry: str) -> dict:
        """Delete a dead letter for good: ``{"entry", "purged": true}``.  NotFound when unknown."""
        return self._data(self.request("DELETE", self.dead_path(entry)), 200)
