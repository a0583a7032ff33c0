"""The worker's single HTTP port: Prometheus metrics, a health probe and a tiny landing page.

``start_server`` binds one address and serves, from a daemon thread, a threaded stdlib WSGI
server with three routes:

* ``/metrics`` -- prometheus_client's own WSGI app for the given registry, so gzip, OpenMetrics
  negotiation (``Accept`` header) and the ``name[]=`` filter behave exactly as upstream;
* ``/health`` -- JSON from the caller's ``health()`` callable: 200 when healthy, 503 otherwise
  (also 503 when ``health()`` raises; the server never dies of it);
* ``/`` -- a static HTML page linking both.

Anything else is 404; methods other than GET, HEAD and OPTIONS are 405.  Nothing else is
exposed: no file access and no way to submit work.  Every connection gets a socket timeout so
idle or slow clients cannot pin threads forever (plus an overall deadline for reading the
request, against clients that trickle a byte at a time), request lines longer than 64 KiB get 414,
and request logs go to ``logging.getLogger(__name__)`` at DEBUG, never to stderr.  With a
certificate and key the port speaks TLS (1.2 minimum); the handshake runs on the connection's
own thread, so a stalled TLS client cannot hold up the accept loop.
"""

import io
import ipaddress
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["MetricsServer", "parse_addr", "start_server"]

#: Seconds a connection may stay silent (per socket operation) before it is dropped.
CONNECTION_TIMEOUT = 10.0
#: Seconds a client gets to deliver its whole request, so trickling bytes cannot pin a thread.
REQUEST_DEADLINE = 30.0
#: Longest request line accepted; longer ones get 414 (same limit as http.server).
MAX_REQUEST_LINE = 65536
#: Bounds on reading and discarding what a rejected client still sends (see _discard_input).
_DISCARD_MAX_BYTES = 1 << 20
_DISCARD_MAX_SECONDS = 2.0
#: Largest request body read (and thrown away) before answering 405.
_MAX_DISCARDED_BODY = 65536
#: How often serve_forever checks for a shutdown request (bounds shutdown() latency).
_POLL_INTERVAL = 0.1

_ALLOW = "GET, HEAD, OPTIONS"
_SERVER_NAME = "guestkit-worker"
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")
_PORT_RE = re.compile(r"[0-9]{1,5}")

_LANDING_PAGE = (
    "<!DOCTYPE html>\n"
    "<html><head><meta charset=\"utf-8\"><title>guestkit-worker</title></head>\n"
    "<body><h1>guestkit-worker</h1>\n"
    "<ul><li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>\n"
    "<li><a href=\"/health\">/health</a> (JSON health check)</li></ul>\n"
    "</body></html>\n"
).encode("utf-8")


# -- address parsing ----------------------------------------------------------------------

def parse_addr(text):
    """Parse a ``--metrics-addr`` value into ``(host, port)``.

    Accepted forms: ``HOST:PORT`` (IPv4 address or host name), ``[IPV6]:PORT`` and ``:PORT``,
    which means every IPv4 interface (host ``"0.0.0.0"``; use ``[::]:PORT`` for dual stack).
    Port 0 asks the kernel for a free port.  Raises :class:`ConfigError` on anything else.
    """
    def bad(reason=None):
        detail = f" ({reason})" if reason else ""
        return ConfigError(f"--metrics-addr: expected HOST:PORT, got {text!r}{detail}")

    if not isinstance(text, str):
        raise bad("not a string")
    value = text.strip()
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1:close + 2] != ":":
            raise bad("an IPv6 address must look like [::1]:9090")
        host, port_text = value[1:close], value[close + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise bad("missing ':PORT'")
        if ":" in host:
            raise bad("put an IPv6 address in brackets, e.g. [::1]:9090")
        if host == "":
            host = "0.0.0.0"
        elif host.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise bad(f"{host!r} is not an IPv4 address") from None
        elif len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
            raise bad(f"{host!r} is not a host name or address")
    if not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
        raise bad(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _display(host, port):
    """``host:port`` with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the WSGI application -----------------------------------------------------------------

def _plain(status, text, extra=()):
    """A precomputed (status, headers, body) triple for a plain-text answer."""
    body = text.encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body)))]
    headers.extend(extra)
    return status, headers, body


_NOT_FOUND = _plain("404 Not Found", "404 not found; try /metrics or /health\n")
_NOT_ALLOWED = _plain("405 Method Not Allowed", "405 method not allowed; use GET, HEAD or OPTIONS\n",
                      [("Allow", _ALLOW)])
_LANDING = ("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                       ("Content-Length", str(len(_LANDING_PAGE)))], _LANDING_PAGE)
_OPTIONS = ("204 No Content", [("Allow", _ALLOW)], b"")


def _health_response(health):
    """Call ``health()`` and turn its ``(healthy, body)`` into a JSON (status, headers, body)."""
    try:
        healthy, payload = health()
        body = json.dumps(payload, default=str, sort_keys=True).encode("utf-8") + b"\n"
        status = "200 OK" if healthy else "503 Service Unavailable"
    except Exception as exc:  # a broken health check must not take the server down
        logger.warning("health check raised %s: %s", type(exc).__name__, exc, exc_info=True)
        payload = {"status": "error",
                   "error": f"health check raised {type(exc).__name__}: {exc}"}
        body = json.dumps(payload, default=str).encode("utf-8") + b"\n"
        status = "503 Service Unavailable"
    return status, [("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store")], body


def _discard_body(environ):
    """Read (and drop) a small request body so closing the socket does not reset the reply."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if 0 < length <= _MAX_DISCARDED_BODY:
        try:
            environ["wsgi.input"].read(length)
        except OSError:
            pass


def _make_app(registry, health):
    """Build the dispatching WSGI app: one dict lookup per request on the fast path."""
    metrics_app = make_wsgi_app(registry)

    def metrics_head(environ, start_response):
        # prometheus_client answers HEAD with 405: render as GET, keep the length, drop the body.
        environ["REQUEST_METHOD"] = "GET"
        captured = []
        body = b"".join(metrics_app(environ, lambda status, headers, exc_info=None:
                                    captured.append((status, headers))))
        status, headers = captured[-1]
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers = list(headers) + [("Content-Length", str(len(body)))]
        start_response(status, headers)
        return []

    routes = {
        "/": lambda: _LANDING,
        "/health": lambda: _health_response(health),
    }

    def app(environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ["PATH_INFO"]
        if method == "GET" or method == "HEAD":
            if path == "/metrics":
                if method == "GET":
                    return metrics_app(environ, start_response)
                return metrics_head(environ, start_response)
            route = routes.get(path)
            status, headers, body = route() if route is not None else _NOT_FOUND
            start_response(status, list(headers))
            return [body] if method == "GET" else []
        if method == "OPTIONS":
            status, headers, body = (_OPTIONS if path == "*" or path == "/metrics" or path in routes
                                     else _NOT_FOUND)
        else:
            _discard_body(environ)
            status, headers, body = _NOT_ALLOWED
        start_response(status, list(headers))
        return [body]

    return app


# -- server plumbing ----------------------------------------------------------------------

class _LogStream:
    """``wsgi.errors`` stand-in: whatever an app writes there goes to our logger, not stderr."""

    def __init__(self):
        self._local = threading.local()

    def write(self, text):
        """Collect text until flush()."""
        parts = getattr(self._local, "parts", None)
        if parts is None:
            parts = self._local.parts = []
        parts.append(text)

    def writelines(self, lines):
        """Collect several pieces of text."""
        for line in lines:
            self.write(line)

    def flush(self):
        """Log everything collected since the last flush as one ERROR record."""
        parts = getattr(self._local, "parts", None)
        if parts:
            self._local.parts = []
            logger.error("%s", "".join(parts).rstrip())


_ERRORS = _LogStream()


class _DeadlineReader(io.RawIOBase):
    """Raw reader over a socket that gives up once the request's overall deadline passes."""

    def __init__(self, sock, deadline, timeout):
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout

    def readable(self):
        """Always readable."""
        return True

    def readinto(self, buffer):
        """recv_into, with the socket timeout shortened to what is left of the deadline."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received within the deadline")
        if left < self._timeout:
            self._timeout = left
            self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _ServerHandler(ServerHandler):
    """wsgiref's per-request handler with our software name and logging instead of stderr."""

    server_software = _SERVER_NAME

    def log_exception(self, exc_info):
        """Log an exception raised by the WSGI app (the client gets a 500)."""
        logger.error("error while serving %s %s", self.environ.get("REQUEST_METHOD"),
                     self.environ.get("PATH_INFO"), exc_info=exc_info)


class _RequestHandler(WSGIRequestHandler):
    """One connection, one request: timeout, TLS handshake in this thread, quiet logging."""

    wbufsize = -1  # buffer the reply so status line, headers and body leave in one send
    server_version = _SERVER_NAME
    # Error replies to unparsable request lines get a real status line; no HTTP/0.9 bodies-only.
    default_request_version = "HTTP/1.0"

    def version_string(self):
        """The ``Server`` header of error replies: no Python version on the wire."""
        return self.server_version

    def setup(self):
        """Arm the timeouts, finish a pending TLS handshake, then build the buffered files."""
        conn = self.connection = self.request
        conn.settimeout(CONNECTION_TIMEOUT)
        if isinstance(conn, ssl.SSLSocket):
            conn.do_handshake()
        self.rfile = io.BufferedReader(
            _DeadlineReader(conn, time.monotonic() + REQUEST_DEADLINE, CONNECTION_TIMEOUT))
        self.wfile = conn.makefile("wb", self.wbufsize)

    def handle(self):
        """Read one request; answer 414 to over-long request lines and 400 to garbage."""
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            self._discard_input()
            return
        if not self.parse_request():  # parse_request already sent the error reply
            return
        handler = _ServerHandler(self.rfile, self.wfile, _ERRORS, self.get_environ(),
                                 multithread=True)
        handler.request_handler = self
        handler.run(self.server.get_app())

    def _discard_input(self):
        """Send what is buffered, then swallow (bounded) what the client is still sending.

        Closing a socket with unread input makes the kernel answer with a reset that can
        destroy our error reply before the client reads it.
        """
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _DISCARD_MAX_SECONDS
            total = 0
            while total < _DISCARD_MAX_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                total += len(chunk)
        except OSError:
            pass

    def get_stderr(self):
        """``wsgi.errors`` goes to the logger."""
        return _ERRORS

    def address_string(self):
        """The client's address, never a reverse DNS lookup."""
        return str(self.client_address[0])

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        """Request and error lines go to the module logger at DEBUG, never to stderr."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """Thread-per-connection WSGI server; optional TLS with the handshake off the accept loop."""

    daemon_threads = True
    allow_reuse_address = True   # lets a restart bind past TIME_WAIT; never two listeners
    allow_reuse_port = False
    request_queue_size = 128
    ssl_context = None

    def server_bind(self):
        """Bind (dual stack for ``::``) without the reverse DNS lookup HTTPServer does."""
        host = self.server_address[0]
        if self.address_family == socket.AF_INET6 and host in ("::", "::0"):
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except (AttributeError, OSError):
                logger.debug("could not clear IPV6_V6ONLY; listening on IPv6 only")
        socketserver.TCPServer.server_bind(self)
        self.server_name = host
        self.server_port = self.server_address[1]
        self.setup_environ()
        if self.ssl_context is not None:
            self.base_environ["HTTPS"] = "on"

    def get_request(self):
        """Accept a connection; with TLS, wrap it but leave the handshake to its thread."""
        conn, addr = self.socket.accept()
        if self.ssl_context is not None:
            try:
                conn = self.ssl_context.wrap_socket(conn, server_side=True,
                                                    do_handshake_on_connect=False)
            except Exception as exc:
                conn.close()
                # socketserver only survives OSError from get_request.
                raise OSError(f"cannot set up TLS for {addr[0]}: {exc}") from exc
        return conn, addr

    def handle_error(self, request, client_address):
        """Connection-level failures (timeouts, resets, bad TLS) are routine: DEBUG only."""
        logger.debug("connection from %s failed", client_address[0] if client_address else "?",
                     exc_info=True)


def _ssl_context(tls_cert, tls_key):
    """A TLS 1.2+ server context from PEM files; ConfigError when they cannot be loaded."""
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("metrics TLS needs both a certificate and a key; got only the "
                          + ("certificate" if tls_cert else "key"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=tls_cert, keyfile=tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load metrics TLS certificate {tls_cert!r} / key {tls_key!r}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


class MetricsServer:
    """A running metrics/health server.

    ``host`` and ``port`` are the address actually bound (so port 0 reports the real port),
    ``url`` is its base URL, and :meth:`shutdown` stops it and waits for the serving thread.
    Usable as a context manager.
    """

    def __init__(self, server, thread, tls):
        self._server = server
        self._thread = thread
        self._stopped = False
        self.host, self.port = server.server_address[:2]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{_display(self.host, self.port)}"

    def shutdown(self):
        """Stop accepting, close the listening socket and join the serving thread (idempotent).

        Connections already being answered finish on their own (daemon) threads.
        """
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shutdown()

    def __repr__(self):
        return f"<MetricsServer {self.url}{' stopped' if self._stopped else ''}>"


def start_server(addr, *, registry, health, tls_cert=None, tls_key=None):
    """Serve ``/metrics``, ``/health`` and ``/`` on ``addr`` from a daemon thread.

    ``addr`` is a ``HOST:PORT`` string (see :func:`parse_addr`) or a ``(host, port)`` tuple.
    ``registry`` is the prometheus_client registry to expose; ``health()`` returns
    ``(healthy, body_dict)``.  ``tls_cert``/``tls_key`` (PEM paths, both or neither) switch
    the port to HTTPS.  Raises :class:`ConfigError` before any thread starts when the address
    cannot be bound (e.g. already in use) or the certificate cannot be loaded.
    """
    host, port = parse_addr(addr) if isinstance(addr, str) else addr
    context = _ssl_context(tls_cert, tls_key) if (tls_cert or tls_key) else None

    class Server(_Server):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        ssl_context = context

    try:
        server = Server((host, port), _RequestHandler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {_display(host, port)}: "
                          f"{exc.strerror or exc}") from None
    server.set_app(_make_app(registry, health))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": _POLL_INTERVAL},
                              name=f"metrics-http-{server.server_address[1]}", daemon=True)
    thread.start()
    result = MetricsServer(server, thread, context is not None)
    logger.info("serving metrics and health on %s", result.url)
    return result
