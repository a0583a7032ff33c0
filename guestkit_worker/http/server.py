"""A bounded, threaded WSGI server: the machinery under the metrics port and the REST API.

:func:`serve_wsgi` binds an address and serves any WSGI app with these limits:

* at most ``max_connections`` connections are open at once.  A connection that has not sent a
  byte yet costs no thread: it waits in a selector (the "waiting room") until its request starts
  arriving, and only then is handed to one of at most ``max_connections`` connection threads,
  created as needed and ended after ``threads.THREAD_IDLE_SECONDS`` without work.  So the
  server holds at most ``max_connections`` sockets and threads (plus its accept thread) however
  many clients connect;
* when every slot is taken, a newcomer takes the slot of an idle connection (one that has sent
  nothing yet, or a kept one between requests) or of one whose request head a thread is still
  reading, fairly between client addresses (:mod:`guestkit_worker.http.slots`): slow senders
  from one address cannot lock out the others.  A new connection pushed out this way gets the
  ``503`` below, a kept one is just closed.  When no connection may give up its slot, the
  newcomer is refused at once: a plain ``503`` with ``Retry-After`` (no answer on TLS) -- it
  never waits in the kernel's queue for a thread;
* a persistent (keep-alive) connection goes back to the waiting room after each answer: an idle
  keep-alive connection holds no thread, counts as open, and is among the first to make room;
* a connection silent for ``CONNECTION_TIMEOUT`` seconds (in the waiting room, or between two
  reads) is closed; the rest of a connection's life (header and request deadlines, keep-alive
  rules, TLS handshake on its own thread, 414 for over-long request lines, quiet logging) is
  :mod:`guestkit_worker.http.request`;
* the accept loop closes connections gracefully (:mod:`guestkit_worker.http.linger`): answer,
  end of stream, then what the client still sends is read and dropped for a moment, so the
  client reads the answer instead of a reset.

``serve_wsgi(..., start=False)`` binds (so a port in use is a :class:`ConfigError` before
anything else happens) without accepting; :meth:`WSGIService.start` begins accepting, so a
program can start its own threads first.
"""

import collections
import contextlib
import errno
import logging
import selectors
import socket
import threading
import time

from ..job.errors import ConfigError
from ..settings.defaults import DEFAULT_HTTP_MAX_CONNECTIONS
from . import listen as httplisten
from . import request as http_request
from .linger import Lingering
from .listen import ListeningServer, display_addr, parse_addr
from .refusal import BUSY as _BUSY
from .refusal import Refusal
from .slots import choose_victim
from .threads import ConnectionThreads

logger = logging.getLogger(__name__)

__all__ = ["WSGIService", "serve_wsgi"]

#: Pause of the accept loop after accept() failed for lack of file descriptors or memory.
_POLL_INTERVAL = 0.1
#: Connections accepted per wake-up of the accept loop before it looks at the others again.
_ACCEPT_BATCH = 64


# -- the service --------------------------------------------------------------------------

class WSGIService:
    """A bound WSGI server with a connection limit (see the module docstring).

    ``host`` and ``port`` are the address actually bound (port 0 reports the real port),
    ``url`` its base URL.  :meth:`start` begins accepting, :meth:`shutdown` stops it.  Usable as
    a context manager.  :meth:`stats` counts connections for tests and diagnostics.
    """

    def __init__(self, server, context, max_connections, name, refusal=_BUSY, on_refused=None):
        self._server = server
        self._refusal = Refusal(name, max_connections, refusal, on_refused)
        self._context = context
        self.max_connections = max_connections
        self._name = name
        self._lock = threading.Lock()
        self._pool = ConnectionThreads(self._serve, max_connections, name)
        self._open = 0          # connections accepted and not yet closed (waiting or busy)
        self._hosts = collections.Counter()  # open connections per client address
        self._heads = collections.OrderedDict()  # conn -> address: head being read, oldest first
        self._cut = set()       # connections whose slot was taken back while a thread read them
        self._counts = collections.Counter()
        self._stop = threading.Event()
        # shutdown() writes a byte here: the accept loop sleeps in its selector until a
        # connection, a waiting connection's deadline or this wake-up (no periodic polling)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._parked = collections.deque()  # (socket, handler) back from a thread, to wait
        self._accept_thread = None
        self._lingering = None  # the accept loop's graceful closes, while it runs
        self._stopped = False
        server.watch_head = self._watch_head  # the request handlers report their heads here
        self.host, self.port = server.server_address[:2]
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://{display_addr(self.host, self.port)}"
        #: (what, function) pairs SIGHUP runs to read this server's files again (tokens, TLS
        #: certificate); each function raises when its file is bad, leaving the old in use
        self.reloadable = []

    # -- public ------------------------------------------------------------------------
    def use_tls(self, context):
        """Handshakes of new connections use ``context`` from now on (a renewed certificate);
        connections already open keep theirs."""
        if self._context is None:
            raise ValueError(f"the {self._name} port serves plain HTTP")
        self._context = context

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
        the accept thread (idempotent).  Requests being answered finish on their own threads,
        each connection closing after its current answer (``Connection: close``)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._accept_thread
        self._server.stopping = True  # a kept connection being served ends after its current answer
        self._stop.set()
        with contextlib.suppress(OSError):  # buffer full: a wake-up is already pending
            self._wake_w.send(b"x")
        if thread is not None:
            thread.join()
        self._wake_r.close()
        self._wake_w.close()
        self._server.server_close()
        self._pool.stop()

    def stats(self):
        """{'open', 'threads', 'heads', 'lingering', 'accepted', 'evicted', 'refused', 'expired',
        'requests', 'reused'} so far ('reused': times a kept connection came back from the
        waiting room; 'evicted': connections that gave their slot to a newcomer; 'heads':
        connections whose request head a thread is reading now; 'lingering': connections being
        closed gracefully now)."""
        lingering = self._lingering
        with self._lock:
            out = dict(self._counts)
            out.update(open=self._open, threads=self._pool.threads, refused=self._refusal.count,
                       heads=len(self._heads), lingering=len(lingering) if lingering is not None else 0)
        for key in ("accepted", "evicted", "refused", "expired", "requests", "reused"):
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
        lingering = self._lingering = Lingering(sel)
        waiting = collections.OrderedDict()  # socket -> (address or handler, deadline); oldest first
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(self._timeout(waiting, lingering)):
                    if key.data is self._wake_r:
                        self._take_parked(sel, waiting)  # or shutdown: the loop condition ends it
                    elif key.data is None:
                        self._accept_some(listener, sel, waiting)
                    elif key.data is lingering:
                        lingering.readable(key.fileobj)
                    elif key.fileobj in waiting:
                        sock = key.fileobj
                        sel.unregister(sock)
                        item, _deadline = waiting.pop(sock)
                        self._pool.dispatch(sock, item)
                now = time.monotonic()
                while waiting and next(iter(waiting.values()))[1] <= now:
                    sock, (item, _deadline) = waiting.popitem(last=False)
                    self._drop(sel, sock, "expired", item)
                lingering.expire(now)
        except Exception:  # the accept loop must not die silently
            logger.exception("%s accept loop failed", self._name)
        finally:
            self._close_all(sel, waiting, lingering)

    @staticmethod
    def _timeout(waiting, lingering):
        """Seconds the selector may sleep: until a connection, the wake-up of shutdown() or
        a parked connection, or the first deadline of a waiting or lingering connection."""
        first = lingering.next_deadline()
        if waiting:
            waited = next(iter(waiting.values()))[1]
            first = waited if first is None else min(first, waited)
        return None if first is None else max(0.0, first - time.monotonic())

    def _close_all(self, sel, waiting, lingering):
        """The loop ends (shutdown): close the waiting, parked and lingering connections now."""
        self._lingering = None
        for sock, (item, _deadline) in list(waiting.items()):
            self._drop(sel, sock, None, item)
        with self._lock:
            parked, self._parked = list(self._parked), collections.deque()
        for sock, handler in parked:
            self._drop(sel, sock, None, handler)
        lingering.close_all()
        sel.close()

    def _take_parked(self, sel, waiting):
        """Move the kept connections handed back by threads into the waiting room."""
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # drained (BlockingIOError)
            pass
        deadline = time.monotonic() + http_request.CONNECTION_TIMEOUT
        while self._parked:
            sock, handler = self._parked.popleft()
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, handler)
            waiting[sock] = (handler, deadline)

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
            if not self._make_room(sel, waiting, addr[0]):
                self._lingering.close(conn, self._refusal.refuse(tls=self._context is not None))
                continue
            with self._lock:
                self._open += 1
                self._hosts[addr[0]] += 1
                self._counts["accepted"] += 1
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ, addr)
            waiting[conn] = (addr, time.monotonic() + http_request.CONNECTION_TIMEOUT)

    def _make_room(self, sel, waiting, host):
        """True when a newcomer from ``host`` may have a slot: one is free, or an idle
        connection or a slow request head gave its slot up (see :mod:`guestkit_worker.http.slots`)."""
        with self._lock:
            if self._open < self.max_connections:
                return True
            victim = choose_victim(host, self._hosts, waiting, self._heads, _host)
            if victim is None:
                return False
            kind, sock = victim
            if kind == "head":
                self._cut_head(sock)
                return True
        item, _deadline = waiting.pop(sock)
        self._drop(sel, sock, "evicted", item)
        return True

    def _cut_head(self, conn):
        """Take back the slot of a connection whose head a thread is reading (lock held): its
        socket is shut, so the thread's read ends at once and the thread closes it."""
        host = self._heads.pop(conn)
        self._cut.add(conn)
        self._open -= 1
        self._leave(host)
        self._counts["evicted"] += 1
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn, socket.SHUT_RDWR)  # the plain socket's, also under TLS

    def _drop(self, sel, sock, reason, item=None):
        """Close a connection of the waiting room: gracefully while the loop runs (a new one
        pushed out of its slot gets the refusal answer), at once when it is ending."""
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(sock)
        with self._lock:
            self._open -= 1
            self._leave(_host(item))
            if reason:
                self._counts[reason] += 1
        kept = isinstance(item, http_request.RequestHandler)
        if self._lingering is None:
            if kept:
                item.close()  # a kept connection: its files too
            else:
                sock.close()
            return
        if kept:
            item.close_files()  # and no answer: the client has sent no request on it yet
            self._lingering.close(sock)
        else:
            tls = self._context is not None
            self._lingering.close(sock, self._refusal.answer if reason == "evicted" and not tls else None)

    # -- on a connection thread ----------------------------------------------------------
    def _serve(self, sock, state):
        """Answer what a connection sends; park it for its next request, or close it.
        ``state`` is the client's address (new connection) or its kept handler."""
        handler = state if isinstance(state, http_request.RequestHandler) else None
        addr = handler.client_address if handler is not None else state
        conn = sock
        kept = False
        try:
            if handler is None:
                if self._context is not None:
                    conn = self._context.wrap_socket(sock, server_side=True,
                                                     do_handshake_on_connect=False)
                self._watch_head(conn, addr, True)  # the TLS handshake counts as head
                handler = self._server.RequestHandlerClass(conn, state, self._server)
            else:
                conn = handler.connection
                with self._lock:
                    self._counts["reused"] += 1
            before = handler.requests
            kept = handler.serve()
            with self._lock:
                self._counts["requests"] += handler.requests - before
            if kept:
                kept = self._park(conn, handler)
        except Exception:  # timeouts, resets, bad TLS: routine
            logger.debug("connection from %s failed", addr[0] if addr else "?", exc_info=True)
        finally:
            if not kept:
                self._release(conn, addr)
                if handler is not None:
                    handler.close()
                else:
                    _close(conn)

    def _watch_head(self, conn, addr, reading):
        """Called by the request handler: ``conn`` starts (True) or has finished (False) reading
        a request head.  False when the connection's slot was taken back meanwhile."""
        with self._lock:
            if conn in self._cut:
                return False
            if reading:
                self._heads.setdefault(conn, addr[0])
            else:
                self._heads.pop(conn, None)
            return True

    def _release(self, conn, addr):
        """A connection served by a thread is done: its slot is free (unless taken already)."""
        with self._lock:
            self._heads.pop(conn, None)
            if conn in self._cut:
                self._cut.discard(conn)
                return
            self._open -= 1
            self._leave(addr[0])

    def _leave(self, host):
        """One connection of ``host`` fewer (lock held); an address without any is forgotten."""
        left = self._hosts[host] - 1
        if left > 0:
            self._hosts[host] = left
        else:
            del self._hosts[host]

    def _park(self, sock, handler):
        """Hand a kept connection back to the waiting room; False when shutting down or when
        its slot was taken back."""
        with self._lock:
            if self._stopped or sock in self._cut:
                return False
            self._parked.append((sock, handler))
        with contextlib.suppress(OSError):  # buffer full: a wake-up is already pending
            self._wake_w.send(b"p")
        return True


def _host(item):
    """The client address of a waiting-room item: an address tuple, or a kept handler."""
    addr = item.client_address if isinstance(item, http_request.RequestHandler) else item
    return addr[0] if addr else ""


def _close(conn):
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    conn.close()


def serve_wsgi(app, addr, *, tls_cert=None, tls_key=None, max_connections=DEFAULT_HTTP_MAX_CONNECTIONS,
               name="http", option="--metrics-addr", start=True, ssl_context=None,
               request_deadline=None, handler_class=None, refusal=None, on_refused=None,
               max_requests=http_request.MAX_REQUESTS_PER_CONNECTION):
    """Bind ``addr`` and serve the WSGI ``app`` with the limits of the module docstring.

    ``addr`` is a ``HOST:PORT`` string (see :func:`parse_addr`; ``option`` names the flag in its
    errors) or a ``(host, port)`` tuple.  ``tls_cert``/``tls_key`` (PEM paths, both or neither)
    switch to HTTPS, or ``ssl_context`` gives a ready server context (client certificates...).
    ``max_connections`` bounds open connections and threads.  ``request_deadline`` (seconds;
    default ``http_request.REQUEST_DEADLINE``) bounds the delivery of a whole request;
    ``max_requests`` bounds the requests answered on one keep-alive connection;
    ``handler_class`` may subclass :class:`http_request.RequestHandler`; ``refusal`` replaces
    the plain-HTTP 503 sent to a refused connection (and to a new one pushed out of its slot),
    and ``on_refused()`` is called for each refused connection.  With ``start=False`` the port
    is bound but nothing is accepted until :meth:`WSGIService.start`.  Raises
    :class:`ConfigError` before any thread starts when the address cannot be bound or the
    certificate cannot be loaded.
    """
    if not isinstance(max_connections, int) or max_connections < 1:
        raise ConfigError(f"max_connections must be at least 1, got {max_connections!r}")
    host, port = parse_addr(addr, option) if isinstance(addr, str) else addr
    context = ssl_context
    if context is None and (tls_cert or tls_key):
        context = httplisten.ssl_context(tls_cert, tls_key, name)

    class Server(ListeningServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    Server.request_deadline = request_deadline
    Server.max_requests = max_requests
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
