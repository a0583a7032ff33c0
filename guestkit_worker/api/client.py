"""A small client of the REST API (what ``guestkit-worker status/result/list/cancel/submit
--api URL`` use): one JSON request per call over http.client, bearer token, TLS with an
optional CA file and client certificate."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ..http.auth import load_tokens
from ..job.errors import ConfigError, GuestkitWorkerError

#: Failures of a request that a busy server causes (its answer lost to a reset, a connection
#: closed without an answer, a TLS connection refused before its handshake): worth a retry.
_TRANSIENT = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)


class ApiUnreachable(GuestkitWorkerError):
    """The API could not be reached or did not answer with JSON (connection, TLS, garbage).

    Attributes:
        transient: True when a busy server is the likely cause (the answer lost to a reset, a
            connection closed without an answer), so asking again after a pause may succeed.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def read_token(path: str) -> str:
    """Read the token a client sends from a token file, in the format the API reads.

    Args:
        path: A file of bearer tokens, one a line.

    Returns:
        Its first token.

    Raises:
        ConfigError: The file cannot be read or holds no token (one line naming the file).
    """
    return load_tokens(path)[0]


#: what every refusal of --api ends with
_BASE_URL_HINT = "give the API's base URL, e.g. http://127.0.0.1:8080 or https://host:8443"


def _bad_url(url: str, problem: str) -> ConfigError:
    shown = repr(url[:200] + ("..." if len(url) > 200 else ""))
    return ConfigError(f"--api {shown}: {problem}; {_BASE_URL_HINT}")


def parse_base_url(url: str) -> tuple[str, str, int, str]:
    """Split an ``--api`` base URL, ``http[s]://HOST[:PORT][/PREFIX]``.

    Args:
        url: The base URL as the user gave it.

    Returns:
        ``(scheme, host, port, path prefix)``: the port defaults to 80 or 443, the prefix has no
        trailing ``/`` (``""`` for none).

    Raises:
        ConfigError: Anything else (another scheme, no host, port 0 or over 65535, a query,
            fragment, credentials, a space or control character): one line naming ``--api``
            and the form wanted.
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
        raise _bad_url(url, "credentials in the URL are not sent (a token goes in --api-token-file)")
    default_port = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port or default_port, parts.path.rstrip("/")


_NO_JSON = object()


def _job_not_found(body: Any) -> bool:
    """Whether a 404's body is the API's "no such job" or "no such dead letter" (its error code
    naming the job_id or entry field), not the 404 of a path that is no API endpoint (a wrong
    --api path, another server)."""
    if not isinstance(body, dict) or body.get("success") is not False:
        return False
    details = body.get("details")
    return body.get("error") in ("NOT_FOUND", "JOB_NOT_FOUND") and isinstance(details, dict) \
        and details.get("field") in ("job_id", "entry")


class ApiClient:
    """A client of one worker's REST API: one request per call, one connection per request.

    Each job call answers ``(HTTP status, decoded JSON body)`` as the API gave them, so a
    caller maps statuses itself (as the job commands do, to their exit statuses).
    """

    def __init__(self, base_url: str, *, token: str | None = None, ca_file: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 timeout: float = 30.0) -> None:
        """Check the base URL and, for https, load the TLS files; nothing is sent yet.

        Args:
            base_url: The API's base URL, like ``http://127.0.0.1:8080`` or ``https://host:8443``.
            token: A bearer token sent with every request, or None.
            ca_file: CA certificates to verify an https server against (default: the system's).
            client_cert: A client certificate (PEM) for an API run with ``--api-client-ca``.
            client_key: Its private key (default: in ``client_cert``).
            timeout: Seconds a request may take (a result's ``wait`` is added to it).

        Raises:
            ConfigError: The base URL is not one (see :func:`parse_base_url`), or a TLS file
                cannot be loaded.
        """
        self.scheme, self.host, self.port, self.prefix = parse_base_url(base_url)
        self.base_url = base_url
        self.token = token
        self.timeout = timeout
        self.context = None
        if self.scheme == "https":
            try:
                self.context = ssl.create_default_context(cafile=ca_file)
                if client_cert:
                    self.context.load_cert_chain(client_cert, client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the API client's TLS files: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float | None = None) -> tuple[int, Any]:
        """Send one request and decode its JSON answer.

        Args:
            method: The HTTP method.
            path: The path below the base URL's prefix, with its query.
            body: The request body (sent as JSON), or None.
            timeout: Seconds for this request instead of the client's.

        Returns:
            ``(HTTP status, decoded JSON body)``.

        Raises:
            ApiUnreachable: No answer (connection, TLS, timeout) or an answer without JSON.
            ConfigError: A 404 that is not the API's "no such job": the base URL's path is
                not a guestkit-worker API (one line naming ``--api``).
        """
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout or self.timeout,
                                               context=self.context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiUnreachable(f"{self.scheme}://{self.host}:{self.port}: {exc}",
                                 transient=isinstance(exc, _TRANSIENT)) from None
        finally:
            conn.close()
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            body = _NO_JSON
        if resp.status == 404 and not _job_not_found(body):
            where = (self.prefix + path).partition("?")[0]
            raise _bad_url(self.base_url, f"not a guestkit-worker API (404 for {where[:300]})")
        if body is _NO_JSON:
            raise ApiUnreachable(f"{self.scheme}://{self.host}:{self.port}: answered {resp.status} "
                                 "without JSON")
        return resp.status, body

    @staticmethod
    def job_path(job_id: str, tail: str = "") -> str:
        """The path of a job's resource.

        Args:
            job_id: The job id (quoted whole: a ``/`` in it cannot reach another path).
            tail: What follows the job's path, e.g. ``/result``.

        Returns:
            ``/api/v1/jobs/JOB_ID`` followed by ``tail``.
        """
        return f"/api/v1/jobs/{quote(job_id, safe='')}{tail}"

    def submit(self, raw: bytes) -> tuple[int, Any]:
        """POST a job document.

        Args:
            raw: The document's bytes, sent as they are (the API validates them).

        Returns:
            ``(status, body)``: 202 queued, 200 the same document was submitted before, 409
            its job id holds another document, 400/413/415/422 refused.

        Raises:
            ApiUnreachable: See :meth:`request`.
            ConfigError: See :meth:`request`.
        """
        return self.request("POST", "/api/v1/jobs", raw)

    def status(self, job_id: str) -> tuple[int, Any]:
        """GET a job's status.

        Args:
            job_id: The job's id.

        Returns:
            ``(status, body)``: 200 with the status in ``data``, 404 no such job.

        Raises:
            ApiUnreachable: See :meth:`request`.
            ConfigError: See :meth:`request`.
        """
        return self.request("GET", self.job_path(job_id))

    def result(self, job_id: str, wait: float = 0) -> tuple[int, Any]:
        """GET a job's result, waiting for it on the server if asked.

        Args:
            job_id: The job's id.
            wait: Seconds the server may wait for the job to finish (0: answer at once; the API
                honours at most 60).

        Returns:
            ``(status, body)``: 200 with the result document in ``data``, 202 not finished
            yet (its status in ``data``), 404 no such job, 503 too many waiting clients.

        Raises:
            ApiUnreachable: See :meth:`request`.
            ConfigError: See :meth:`request`.
        """
        query = f"?wait={wait:g}" if wait > 0 else ""
        return self.request("GET", self.job_path(job_id, "/result") + query, timeout=self.timeout + wait)

    def cancel(self, job_id: str) -> tuple[int, Any]:
        """DELETE a job: cancel it.

        Args:
            job_id: The job's id.

        Returns:
            ``(status, body)``: 200 cancelled before it ran, 202 running and told to stop, 409
            finished or not cancellable, 404 no such job.

        Raises:
            ApiUnreachable: See :meth:`request`.
            ConfigError: See :meth:`request`.
        """
        return self.request("DELETE", self.job_path(job_id))

    def list(self, **query: Any) -> tuple[int, Any]:
        """GET one page of the job listing, newest first.

        Args:
            **query: The listing's parameters (``status``, ``operation``, ``limit``,
                ``page_token``); those that are None are left out.

        Returns:
            ``(status, body)``: 200 with ``jobs`` and ``next_page_token`` in ``data``, 400
            naming the parameter it refused.

        Raises:
            ApiUnreachable: See :meth:`request`.
            ConfigError: See :meth:`request`.
        """
        given = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", "/api/v1/jobs" + (f"?{urlencode(given)}" if given else ""))

    @staticmethod
    def dead_path(entry: str, tail: str = "") -> str:
        """``/api/v1/dead/ENTRY`` followed by ``tail`` (the entry quoted whole)."""
        return f"/api/v1/dead/{quote(entry, safe='')}{tail}"

    def dead_list(self, **query: Any) -> tuple[int, Any]:
        """GET one page of dead letters, newest first (``limit``, ``page_token``; None left
        out): 200 with ``entries`` and ``next_page_token`` in ``data``, 400 naming the parameter."""
        given = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", "/api/v1/dead" + (f"?{urlencode(given)}" if given else ""))

    def dead_show(self, entry: str) -> tuple[int, Any]:
        """GET one dead letter with its document: 200, 404 no such entry, 400 a name no entry has."""
        return self.request("GET", self.dead_path(entry))

    def dead_requeue(self, entry: str) -> tuple[int, Any]:
        """POST a requeue: 200 queued again, 404, 409/422 ``NOT_REQUEUEABLE`` (reason in details)."""
        return self.request("POST", self.dead_path(entry, "/requeue"), b"")

    def dead_purge(self, entry: str) -> tuple[int, Any]:
        """DELETE a dead letter: 200 deleted, 404 no such entry."""
        return self.request("DELETE", self.dead_path(entry))
