"""Serving the REST API: the metrics port's threaded HTTP server (``guestkit_worker.httpserver``)
with the API's own bounds.

* at most ``max_connections`` connections are served at once; one more is answered ``503``
  with ``Retry-After`` straight from the accept loop (TLS connections are closed instead, as
  an answer would need a handshake) and counted in ``guestkit_api_connections_rejected_total``;
* every connection has the per-operation socket timeout of the metrics port, and the whole
  request (line, headers, body) must arrive within ``request_deadline`` seconds, so a client
  that sends one byte a second holds one connection slot for that long at most;
* an answer given before the body was read (401, 413, 415...) is followed by a bounded drain
  of what the client still sends, so the client sees the answer rather than a reset;
* TLS 1.2+ with ``tls_cert``/``tls_key``; ``client_ca`` makes a client certificate signed by
  that CA mandatory (the handshake fails without one).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Callable, Optional, Tuple, Union

from .. import httpserver
from ..errors import ConfigError
from .app import DISCARD_INPUT

log = logging.getLogger(__name__)

#: Defaults of --api-max-connections and of the whole-request deadline.
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_REQUEST_DEADLINE = 30.0

_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nCache-Control: no-store\r\n")
_REFUSAL_BODY = (b'{"success": false, "error": "TOO_MANY_CONNECTIONS", "message": '
                 b'"too many open connections; retry later"}\n')
_REFUSAL += b"Content-Length: %d\r\n\r\n" % len(_REFUSAL_BODY) + _REFUSAL_BODY


class _ApiRequestHandler(httpserver._RequestHandler):
    """The metrics port's request handler, with the API's deadline and the drain after an
    answer given before the body was read."""

    def setup(self) -> None:
        super().setup()
        self.rfile.raw._deadline = time.monotonic() + self.server.request_deadline
        self._environ = None

    def get_environ(self) -> dict:
        self._environ = super().get_environ()
        return self._environ

    def handle(self) -> None:
        super().handle()
        if self._environ is not None and self._environ.get(DISCARD_INPUT):
            self._discard_input()


class _ApiServer(httpserver._Server):
    """Thread-per-connection server with a cap on connections served at once."""

    request_deadline = DEFAULT_REQUEST_DEADLINE
    on_refused: Callable[[], None] = staticmethod(lambda: None)

    def init_slots(self, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.on_refused()
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request) -> None:
        """Answer 503 without a thread and without waiting for the client (plain HTTP only)."""
        try:
            if not isinstance(request, ssl.SSLSocket):
                request.setblocking(False)
                try:
                    request.recv(65536)  # what already arrived, so closing does not reset
                except OSError:
                    pass
                request.send(_REFUSAL)
                request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)


def _tls_context(tls_cert: Optional[str], tls_key: Optional[str],
                 client_ca: Optional[str]) -> Optional[ssl.SSLContext]:
    if not (tls_cert or tls_key):
        if client_ca:
            raise ConfigError("--api-client-ca needs --api-tls-cert and --api-tls-key")
        return None
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--api-tls-cert and --api-tls-key go together")
    context = httpserver._ssl_context(tls_cert, tls_key)
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load --api-client-ca {client_ca!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_api_server(addr: Union[str, Tuple[str, int]], app: Callable, *,
                     tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                     client_ca: Optional[str] = None,
                     max_connections: int = DEFAULT_MAX_CONNECTIONS,
                     request_deadline: float = DEFAULT_REQUEST_DEADLINE,
                     on_refused: Callable[[], None] = lambda: None) -> httpserver.MetricsServer:
    """Serve ``app`` (a WSGI callable) on ``addr`` from a daemon thread; returns the handle
    (``host``, ``port``, ``url``, ``shutdown()``).  ConfigError when the address cannot be
    bound or the TLS files cannot be loaded."""
    host, port = parse_api_addr(addr) if isinstance(addr, str) else addr
    context = _tls_context(tls_cert, tls_key, client_ca)

    class Server(_ApiServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        ssl_context = context

    Server.request_deadline = request_deadline
    Server.on_refused = staticmethod(on_refused)
    try:
        server = Server((host, port), _ApiRequestHandler)
    except OSError as exc:
        raise ConfigError(f"--api-addr: cannot listen on {httpserver._display(host, port)}: "
                          f"{exc.strerror or exc}") from None
    server.init_slots(max_connections)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"api-http-{server.server_address[1]}", daemon=True)
    thread.start()
    handle = httpserver.MetricsServer(server, thread, context is not None)
    log.info("serving the REST API on %s%s", handle.url,
             " (client certificates required)" if client_ca else "")
    return handle


def parse_api_addr(text: str) -> Tuple[str, int]:
    """``--api-addr`` HOST:PORT, [IPV6]:PORT or :PORT (see httpserver.parse_addr)."""
    try:
        return httpserver.parse_addr(text)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--metrics-addr", "--api-addr", 1)) from None


def is_loopback(host: str) -> bool:
    """True when ``host`` only ever reaches this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
