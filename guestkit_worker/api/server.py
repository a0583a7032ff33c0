"""Serving the REST API on the bounded WSGI server of the metrics port
(:func:`guestkit_worker.http.server.serve_wsgi`), on its own address and with its own bounds.

* at most ``max_connections`` connections are open at once, each with at most one thread; a
  connection that has sent nothing waits without a thread; when every slot is taken, an idle
  connection or one still sending its request head makes room for a newcomer, fairly between
  client addresses (see :mod:`guestkit_worker.http.slots`); when none may, a newcomer is
  answered ``503`` with ``Retry-After`` (JSON) straight from the accept loop (TLS connections
  are closed instead, as an answer would need a handshake) and counted by ``on_refused``;
* a connection silent for 10 s is closed; the TLS handshake, request line and headers must
  arrive within 5 s (``http_request.HEADER_DEADLINE``) and the whole request within
  ``request_deadline`` seconds (default 30), so a client that sends its head one byte a second
  holds one slot for 5 s at most; at most 100 header lines of 64 KiB each;
* an answer given before the body was read (401, 413, 415...) is followed by a bounded drain
  of what the client still sends, so the client sees the answer rather than a reset;
* TLS 1.2+ with ``tls_cert``/``tls_key``, the handshake on the connection's own thread;
  ``client_ca`` makes a client certificate signed by that CA mandatory.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from typing import Callable

from ..http import listen as httplisten
from ..http import server as wsgiserver
from ..http.listen import parse_addr
from ..job.errors import ConfigError
from ..settings.defaults import DEFAULT_API_MAX_CONNECTIONS

log = logging.getLogger(__name__)

_REFUSAL_BODY = (b'{"success": false, "error": "TOO_MANY_CONNECTIONS", "message": '
                 b'"too many open connections; retry later"}\n')
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nCache-Control: no-store\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY))


def tls_context(tls_cert: str | None, tls_key: str | None,
                client_ca: str | None) -> ssl.SSLContext | None:
    """The API's TLS server context (None without a certificate); ConfigError on a bad file."""
    if not (tls_cert or tls_key):
        if client_ca:
            raise ConfigError("--api-client-ca needs --api-tls-cert and --api-tls-key")
        return None
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--api-tls-cert and --api-tls-key go together")
    context = httplisten.ssl_context(tls_cert, tls_key, "API")
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load --api-client-ca {client_ca!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_api_server(addr: str | tuple[str, int], app: Callable, *,
                     tls_cert: str | None = None, tls_key: str | None = None,
                     client_ca: str | None = None, max_connections: int = DEFAULT_API_MAX_CONNECTIONS,
                     request_deadline: float | None = None,
                     on_refused: Callable[[], None] = lambda: None,
                     start: bool = True) -> wsgiserver.WSGIService:
    """Serve ``app`` (a WSGI callable) on ``addr``; returns the service (``url``, ``port``,
    ``start()``, ``shutdown()``, ``stats()``).  ConfigError when the address cannot be bound or
    the TLS files cannot be loaded.  ``start=False``: bound, accepting only after ``start()``."""
    host, port = parse_addr(addr, "--api-addr") if isinstance(addr, str) else addr
    context = tls_context(tls_cert, tls_key, client_ca)
    try:
        service = wsgiserver.serve_wsgi(app, (host, port), ssl_context=context,
                                        max_connections=max_connections,
                                        name="api", option="--api-addr", request_deadline=request_deadline,
                                        refusal=_REFUSAL, on_refused=on_refused, start=start)
    except ConfigError as exc:
        raise ConfigError(f"--api-addr: {exc}") from None
    log.info("serving the REST API on %s (at most %d connections at once%s)", service.url, max_connections,
             "; client certificates required" if client_ca else "")
    return service


def is_loopback(host: str) -> bool:
    """True when ``host`` only ever reaches this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
