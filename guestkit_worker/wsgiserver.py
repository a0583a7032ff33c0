"""A bounded, threaded WSGI server: the machinery under the metrics port and the REST API.

:func:`serve_wsgi` binds an address and serves any WSGI app with these limits:

* at most ``max_connections`` connections are open at once.  A connection that has not sent a
  byte yet costs no thread: it waits in a selector (the "waiting room") until its request starts
  arriving, and only then is handed to one of at most ``max_connections`` connection threads,
  created as needed and ended after ``THREAD_IDLE_SECONDS`` without work.  So the server holds at most ``max_connections`` sockets and threads
  (plus its accept thread) however many clients connect;
* when every slot is taken, a new connection takes the slot of the connection that has waited
  longest without sending anything (that one is closed); when every slot is busy answering a
  request, the newcomer is refused at once: a plain ``503`` with ``Retry-After`` (just closed on
  TLS) -- it never waits in the kernel's queue for a thread;
* a connection silent for ``CONNECTION_TIMEOUT`` seconds (in the waiting room, or between two
  reads) is closed; the rest of a connection's life (request deadline, TLS handshake on its own
  thread, 414 for over-long request lines, quiet logging) is :mod:`guestkit_worker.http_request`.

``serve_wsgi(..., start=False)`` binds (so a port in use is a :class:`ConfigError` before
anything else happens) without accepting; :meth:`WSGIService.start` begins accepting, so a
program can start its own threads first.
"""

import collections
import errno
import ipaddress
import logging
import queue
import re
import selectors
import socket
import socketserver
import ssl
import threading
import time
from wsgiref.simple_server import WSGIServer

from . import http_request
from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_CONNECTIONS", "WSGIService", "parse_addr", "serve_wsgi"]

#: Connections open at once unless the caller says otherwise (--http-max-connections).
DEFAULT_MAX_CONNECTIONS = 64
#: Pause of the accept loop after accept() failed for lack of file descriptors or memory.
_POLL_INTERVAL = 0.1
#: Connections accepted per wake-up of the accept loop before it looks at the others again.
_ACCEPT_BATCH = 64
#: Seconds a connection thread waits for another connection before it exits.
THREAD_IDLE_SECONDS = 5.0
#: At most one warning per this many seconds about refused connections.
_REFUSAL_LOG_SECONDS = 60.0

_BUSY_BODY = b"503 busy: too many connections; retry later\n"
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
         % (len(_BUSY_BODY), _BUSY_BODY))
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")
_PORT_RE = re.compile(r"[0-9]{1,5}")


# -- address parsing ----------------------------------------------------------------------

def parse_addr(text, option="--metrics-addr"):
    """Parse a ``HOST:PORT`` option value into ``(host, port)``.

    Accepted forms: ``HOST:PORT`` (IPv4 address or host name), ``[IPV6]:PORT`` and ``:PORT``,
    which means every IPv4 interface (host ``"0.0.0.0"``; use ``[::]:PORT`` for dual stack).
    Port 0 asks the kernel for a free port.  Raises :class:`ConfigError` naming ``option``.
    """
    def bad(reason=None):
        detail = f" ({reason})" if reason else ""
        return ConfigError(f"{option}: expected HOST:PORT, got {text!r}{detail}")

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


def display_addr(host, port):
    """``host:port`` with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(WSGIServer):
    """The bound listening socket and the WSGI environment; connections are run by WSGIService."""

    allow_reuse_address = True   # lets a restart bind past TIME_WAIT; never two listeners
    allow_reuse_port = False
    request_queue_size = 128

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


def ssl_context(tls_cert, tls_key, what="metrics"):
    """A TLS 1.2+ server context from PEM files; ConfigError when they cannot be loaded."""
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError(f"{what} TLS needs both a certificate and a key; got only the "
                          + ("certificate" if tls_cert else "key"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=tls_cert, keyfile=tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load {what} TLS certificate {tls_cert!r} / key {tls_key!r}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


# -- the service --------------------------------------------------------------------------

class WSGIService:
    """A bound WSGI server with a connection limit (see the module docstring).

    ``host`` and ``port`` are the address actually bound (port 0 reports the real port),
    ``url`` its base URL.  :meth:`start` begins accepting, :meth:`shutdown` stops it.  Usable as
    a context manager.  :meth:`stats` counts connections for tests and diagnostics.
    """

    def __init__(self, server, context, max_connections, name, refusal=_BUSY, on_refused=None):
        self._server = server
        self._refusal = refusal
        self._on_refused = on_refused
        self._context = context
        self.max_connections = max_connections
        self._name = name
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._open = 0          # connections accepted and not yet closed (waiting or busy)
        self._threads = 0       # connection threads alive
        self._idle = 0          # connection threads waiting for work
        self._pending = 0       # connections handed over, not yet taken by a thread
        self._counts = collections.Counter()
        self._last_refusal_log = None
        self._stop = threading.Event()
        # shutdown() writes a byte here: the accept loop sleeps in its selector until a
        # connection, a waiting connection's deadline or this wake-up (no periodic polling)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._accept_thread = None
        self._stopped = False
        self.host, self.port = server.server_address[:2]
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://{display_addr(self.host, self.port)}"

    # -- public ------------------------------------------------------------------------
    def start(self):
        """Begin accepting connections (idempotent)."""
        with self._lock:
            if self._accept_thread is not None or self._stopped:
                return
            self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                                   name=f"{self._name}-{self.port}")
        self._accept_thread.start()

    def shutdown(self):
        """Stop accepting, close the listening socket and every waiting connection, and join
        the accept thread (idempotent).  Requests being answered finish on their own threads."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._accept_thread
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:  # buffer full: a wake-up is already pending
            pass
        if thread is not None:
            thread.join()
        self._wake_r.close()
        self._wake_w.close()
        self._server.server_close()
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)

    def stats(self):
        """{'open', 'threads', 'accepted', 'evicted', 'refused', 'expired'} so far."""
        with self._lock:
            out = dict(self._counts)
            out.update(open=self._open, threads=self._threads)
        for key in ("accepted", "evicted", "refused", "expired"):
            out.setdefault(key, 0)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shutdown()

    def __repr__(self):
        return f"<WSGIService {self.url}{' stopped' if self._stopped else ''}>"

    # -- accept loop -------------------------------------------------------------------
    def _accept_loop(self):
        listener = self._server.socket
        listener.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        waiting = collections.OrderedDict()  # socket -> (address, deadline); oldest first
        try:
            while not self._stop.is_set():
                timeout = None  # block until a connection, the wake-up of shutdown() or ...
                if waiting:     # ... the deadline of the connection waiting longest
                    first = next(iter(waiting.values()))[1]
                    timeout = max(0.0, first - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.data is self._wake_r:
                        continue  # shutdown: the loop condition ends it
                    if key.data is None:
                        self._accept_some(listener, sel, waiting)
                    elif key.fileobj in waiting:
                        sock = key.fileobj
                        sel.unregister(sock)
                        addr, _deadline = waiting.pop(sock)
                        self._dispatch(sock, addr)
                now = time.monotonic()
                while waiting and next(iter(waiting.values()))[1] <= now:
                    sock, _ = waiting.popitem(last=False)
                    self._drop(sel, sock, "expired")
        except Exception:  # the accept loop must not die silently
            logger.exception("%s accept loop failed", self._name)
        finally:
            for sock in list(waiting):
                self._drop(sel, sock, None)
            sel.close()

    def _accept_some(self, listener, sel, waiting):
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ECONNABORTED...: try again later
                logger.debug("%s: accept failed: %s", self._name, exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(_POLL_INTERVAL)
                return
            with self._lock:
                full = self._open >= self.max_connections
            if full and waiting:
                oldest, _ = waiting.popitem(last=False)
                self._drop(sel, oldest, "evicted")
                full = False
            if full:
                self._refuse(conn, addr)
                continue
            with self._lock:
                self._open += 1
                self._counts["accepted"] += 1
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, addr)
            waiting[conn] = (addr, time.monotonic() + http_request.CONNECTION_TIMEOUT)

    def _drop(self, sel, sock, reason):
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        with self._lock:
            self._open -= 1
            if reason:
                self._counts[reason] += 1
        sock.close()

    def _refuse(self, conn, addr):
        with self._lock:
            self._counts["refused"] += 1
            now = time.monotonic()
            warn = (self._last_refusal_log is None
                    or now - self._last_refusal_log >= _REFUSAL_LOG_SECONDS)
            if warn:
                self._last_refusal_log = now
        if warn:
            logger.warning("%s: all %d connections busy; refusing new ones (next note in %.0f s)",
                           self._name, self.max_connections, _REFUSAL_LOG_SECONDS)
        if self._on_refused is not None:
            try:
                self._on_refused()
            except Exception:  # a counter must not stop the accept loop
                logger.exception("%s: on_refused failed", self._name)
        try:
            if self._context is None:
                conn.setblocking(False)
                try:
                    conn.recv(65536)  # what already arrived, so closing does not reset the answer
                except OSError:
                    pass
                conn.send(self._refusal)
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    # -- connection threads ------------------------------------------------------------
    def _dispatch(self, sock, addr):
        sock.setblocking(True)
        with self._lock:
            self._pending += 1
            spawn = self._pending > self._idle and self._threads < self.max_connections
            if spawn:
                self._threads += 1
                self._idle += 1
        self._queue.put((sock, addr))
        if spawn:
            threading.Thread(target=self._connection_thread, daemon=True,
                             name=f"{self._name}-conn").start()

    def _connection_thread(self):
        """Serve dispatched connections; exit after THREAD_IDLE_SECONDS without one."""
        while True:
            try:
                item = self._queue.get(timeout=THREAD_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._pending == 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
                if item is not None:
                    self._pending -= 1
            if item is None:
                with self._lock:
                    self._threads -= 1
                return
            sock, addr = item
            try:
                self._serve_one(sock, addr)
            finally:
                with self._lock:
                    self._open -= 1
                    self._idle += 1

    def _serve_one(self, sock, addr):
        conn = sock
        try:
            if self._context is not None:
                conn = self._context.wrap_socket(sock, server_side=True,
                                                 do_handshake_on_connect=False)
            http_request.RequestHandler(conn, addr, self._server)
        except Exception:  # timeouts, resets, bad TLS: routine
            logger.debug("connection from %s failed", addr[0] if addr else "?", exc_info=True)
        finally:
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()


def serve_wsgi(app, addr, *, tls_cert=None, tls_key=None, max_connections=DEFAULT_MAX_CONNECTIONS,
               name="http", option="--metrics-addr", start=True, ssl_context=None,
               request_deadline=None, handler_class=None, refusal=None, on_refused=None):
    """Bind ``addr`` and serve the WSGI ``app`` with the limits of the module docstring.

    ``addr`` is a ``HOST:PORT`` string (see :func:`parse_addr`; ``option`` names the flag in its
    errors) or a ``(host, port)`` tuple.  ``tls_cert``/``tls_key`` (PEM paths, both or neither)
    switch to HTTPS, or ``ssl_context`` gives a ready server context (client certificates...).
    ``max_connections`` bounds open connections and threads.  ``request_deadline`` (seconds;
    default ``http_request.REQUEST_DEADLINE``) bounds the delivery of a whole request;
    ``handler_class`` may subclass :class:`http_request.RequestHandler`; ``refusal`` replaces
    the plain-HTTP 503 sent when every slot is busy, and ``on_refused()`` is called for each
    refused connection.  With ``start=False`` the port is bound but nothing is accepted until
    :meth:`WSGIService.start`.  Raises :class:`ConfigError` before any thread starts when the
    address cannot be bound or the certificate cannot be loaded.
    """
    if not isinstance(max_connections, int) or max_connections < 1:
        raise ConfigError(f"max_connections must be at least 1, got {max_connections!r}")
    host, port = parse_addr(addr, option) if isinstance(addr, str) else addr
    context = ssl_context
    if context is None and (tls_cert or tls_key):
        context = globals()["ssl_context"](tls_cert, tls_key, name)

    class Server(_Server):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    Server.request_deadline = request_deadline
    try:
        server = Server((host, port), handler_class or http_request.RequestHandler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {display_addr(host, port)}: "
                          f"{exc.strerror or exc}") from None
    if context is not None:
        server.base_environ["HTTPS"] = "on"
    server.set_app(app)
    service = WSGIService(server, context, max_connections, name,
                          refusal=_BUSY if refusal is None else refusal, on_refused=on_refused)
    if start:
        service.start()
    return service
