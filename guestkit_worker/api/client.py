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
    """The API could not be reached or did not answer with JSON (connection, TLS, garbage);
    ``transient`` when a retry may well succeed (see ``_TRANSIENT``)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def read_token(path: str) -> str:
    """The first token of a token file (the format the API reads)."""
    return load_tokens(path)[0]


#: what every refusal of --api ends with
_BASE_URL_HINT = "give the API's base URL, e.g. http://127.0.0.1:8080 or https://host:8443"


def _bad_url(url: str, problem: str) -> ConfigError:
    shown = repr(url[:200] + ("..." if len(url) > 200 else ""))
    return ConfigError(f"--api {shown}: {problem}; {_BASE_URL_HINT}")


def parse_base_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of an --api base URL; ConfigError (one line naming
    --api and the form wanted) for anything that is not ``http[s]://HOST[:PORT][/PREFIX]``."""
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
    """Whether a 404's body is the API's "no such job" (its error code naming the job_id field),
    not the 404 of a path that is no API endpoint (a wrong --api path, another server)."""
    if not isinstance(body, dict) or body.get("success") is not False:
        return False
    details = body.get("details")
    return body.get("error") in ("NOT_FOUND", "JOB_NOT_FOUND") and isinstance(details, dict) \
        and details.get("field") == "job_id"


class ApiClient:
    """``base_url`` like ``http://127.0.0.1:8080`` or ``https://host:8443``."""

    def __init__(self, base_url: str, *, token: str | None = None, ca_file: str | None = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 timeout: float = 30.0) -> None:
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
        """(HTTP status, decoded JSON body); ApiUnreachable when there is no JSON answer,
        ConfigError (naming --api) for a 404 that is not the API's "no such job"."""
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
        return f"/api/v1/jobs/{quote(job_id, safe='')}{tail}"

    def submit(self, raw: bytes) -> tuple[int, Any]:
        return self.request("POST", "/api/v1/jobs", raw)

    def status(self, job_id: str) -> tuple[int, Any]:
        return self.request("GET", self.job_path(job_id))

    def result(self, job_id: str, wait: float = 0) -> tuple[int, Any]:
        query = f"?wait={wait:g}" if wait > 0 else ""
        return self.request("GET", self.job_path(job_id, "/result") + query, timeout=self.timeout + wait)

    def cancel(self, job_id: str) -> tuple[int, Any]:
        return self.request("DELETE", self.job_path(job_id))

    def list(self, **query: Any) -> tuple[int, Any]:
        given = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", "/api/v1/jobs" + (f"?{urlencode(given)}" if given else ""))
