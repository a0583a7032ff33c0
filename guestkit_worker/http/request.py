"""One HTTP connection of :mod:`guestkit_worker.http.server`: read requests within their
deadlines, run the WSGI app, keep the connection for the next request when HTTP allows it, log
quietly.

The TLS handshake (when the socket is wrapped) runs here, on the connection's thread, within
``HEADER_DEADLINE`` seconds.  A connection silent for ``CONNECTION_TIMEOUT`` seconds per read,
or that has not delivered its request line and headers ``HEADER_DEADLINE`` seconds, or its
whole request ``REQUEST_DEADLINE`` seconds, after a thread took the request up, is dropped (the
server, told by ``server.watch_head`` when a request's head starts and ends arriving, may give
the slot of a slow head to another client, see :mod:`guestkit_worker.http.slots`).  Request
lines over ``MAX_REQUEST_LINE`` bytes get 414, and requests whose body length is ambiguous 400
before the connection closes (:mod:`guestkit_worker.http.framing`).  An answer given before the
body was read (401, 413...) is followed by a bounded read of what the client still sends, then
the connection closes, so the client sees the answer rather than a reset.

Persistent connections: after a complete answer the connection stays open when the client spoke
HTTP/1.1 without ``Connection: close`` (or HTTP/1.0 with ``Connection: keep-alive``), the answer
had a ``Content-Length``, its status was below 500 and the request's body was read to its end;
at most ``MAX_REQUESTS_PER_CONNECTION`` requests per connection.  A request already buffered
(pipelined), or arriving within ``LINGER_MS``, is answered at once on the same thread; otherwise
:meth:`RequestHandler.serve` returns True and the server parks the connection without a thread
until its next request starts.  Request logs go to this module's logger at DEBUG, never to
stderr, and no reply names the Python version.
"""

import contextlib
import io
import logging
import select
import socket
import ssl
import threading
import time
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

from . import framing as http_framing

logger = logging.getLogger(__name__)

#: Seconds a connection may stay silent (before its request, or per read) before it is dropped.
CONNECTION_TIMEOUT = 10.0
#: Seconds a client gets to deliver its whole request, so trickling bytes cannot pin a thread.
REQUEST_DEADLINE = 30.0
#: Seconds a client gets to deliver its request line and headers (a head arrives at once; a
#: client sending it a byte at a time holds a slot this long at most).
HEADER_DEADLINE = 5.0
#: Longest request line accepted; longer ones get 414 (same limit as http.server).
MAX_REQUEST_LINE = 65536
#: Requests answered on one connection before the server closes it (``Connection: close``).
MAX_REQUESTS_PER_CONNECTION = 1000
#: Milliseconds a connection thread waits for the next request on a kept connection before
#: parking it in the waiting room (a client sending its next request at once skips two hand-overs).
LINGER_MS = 2
#: Bounds on reading and dropping what a client still sends after an answer given before its
#: body was read (see _discard_input): bytes, seconds in all (never past the request's deadline),
#: and seconds of silence after which the client is taken to have stopped sending.
_DISCARD_MAX_BYTES = 16 << 20
_DISCARD_MAX_SECONDS = 5.0
_DISCARD_SILENCE = 1.0

SERVER_NAME = "guestkit-worker"


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
    """Raw reader over a socket that gives up once the current request's deadline passes.

    :meth:`arm` starts a request's deadline; :meth:`ready` tells, without waiting, whether more
    of the stream has already arrived (``eof`` is set when the peer closed its side)."""

    def __init__(self, sock, timeout):
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._deadline = 0.0
        self._polling = False
        self.eof = False

    def arm(self, deadline, timeout):
        """Start a request: a fresh deadline and per-read timeout."""
        self._deadline = deadline
        self._timeout = timeout
        self._sock.settimeout(timeout)

    @property
    def deadline(self):
        """When (time.monotonic()) the current request must have arrived."""
        return self._deadline

    def readable(self):
        """Always readable."""
        return True

    def readinto(self, buffer):
        """recv_into, with the socket timeout shortened to what is left of the deadline."""
        if self._polling:
            return self._read_ready(buffer)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received within the deadline")
        if left < self._timeout:
            self._timeout = left
            self._sock.settimeout(left)
        n = self._sock.recv_into(buffer)
        self.eof = n == 0
        return n

    def _read_ready(self, buffer):
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket):
            if not sock.pending():
                return None  # what waits in the kernel wakes the server's selector
            return sock.recv_into(buffer)
        sock.settimeout(0.0)
        try:
            n = sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return None
        self.eof = n == 0
        return n

    def ready(self, rfile):
        """True when ``rfile`` (the buffered reader over this) has bytes to read right now."""
        self._polling = True
        try:
            return bool(rfile.peek(1))
        except OSError:
            self.eof = True
            return False
        finally:
            self._polling = False


class _LineReader(io.BufferedReader):
    """The connection's buffered reader; while ``lines`` is a list, each line readline() returns
    is also added to it (the raw header lines, which http_framing checks)."""

    lines = None

    def readline(self, size=-1):
        """One line, recorded when recording."""
        line = super().readline(size)
        if self.lines is not None:
            self.lines.append(line)
        return line


class _Body:
    """``wsgi.input``: the request body, never past its ``Content-Length`` (so the next request
    on the connection stays unread); ``left`` counts what the app has not read."""

    __slots__ = ("_rfile", "left")

    def __init__(self, rfile, length):
        self._rfile = rfile
        self.left = length

    def read(self, size=-1):
        """At most ``size`` bytes of what is left of the body (all of it by default)."""
        return self._take(self._rfile.read, size)

    def readline(self, size=-1):
        """One line of the body, within what is left."""
        return self._take(self._rfile.readline, size)

    def _take(self, reader, size):
        if size is None or size < 0 or size > self.left:
            size = self.left
        if not size:
            return b""
        data = reader(size)
        self.left -= len(data)
        if not data:  # the client closed early: nothing more will come
            self.left = 0
        return data

    def readlines(self, hint=-1):
        """The remaining lines of the body."""
        return list(iter(self.readline, b""))

    def __iter__(self):
        return iter(self.readline, b"")


class _ServerHandler(ServerHandler):
    """wsgiref's per-request handler: our software name, logging instead of stderr, no copy of
    the process environment in each request, and the ``Connection`` header of the answer."""

    server_software = SERVER_NAME
    os_environ = {}

    def cleanup_headers(self):
        """Content-Length when known; keep the connection only if every condition holds."""
        super().cleanup_headers()
        self.request_handler.decide_keep_alive(self)

    def log_exception(self, exc_info):
        """Log an exception raised by the WSGI app (the client gets a 500)."""
        logger.error("error while serving %s %s", self.environ.get("REQUEST_METHOD"),
                     self.environ.get("PATH_INFO"), exc_info=exc_info)


class RequestHandler(WSGIRequestHandler):
    """One connection and its requests: timeouts, TLS handshake in this thread, keep-alive,
    quiet logging.  Built by the server once per connection (``setup()`` runs at once); each
    :meth:`serve` answers the requests that have arrived."""

    wbufsize = -1  # buffer the reply so status line, headers and body leave in one send
    server_version = SERVER_NAME
    protocol_version = "HTTP/1.1"  # parse_request honours keep-alive; error replies say 1.1
    # Error replies to unparsable request lines get a real status line; no HTTP/0.9 bodies-only.
    default_request_version = "HTTP/1.0"

    def __init__(self, request, client_address, server):  # pylint: disable=super-init-not-called
        self.request = request
        self.client_address = client_address
        self.server = server
        self.requests = 0
        self.close_connection = True
        self._body = None
        self.setup()

    def version_string(self):
        """The ``Server`` header of error replies: no Python version on the wire."""
        return self.server_version

    def setup(self):
        """Arm the timeouts, finish a pending TLS handshake, then build the buffered files."""
        conn = self.connection = self.request
        if isinstance(conn, ssl.SSLSocket):  # the socket's timeout bounds the whole handshake
            conn.settimeout(min(self.request_deadline(), HEADER_DEADLINE))
            conn.do_handshake()
        conn.settimeout(CONNECTION_TIMEOUT)
        self._reader = _DeadlineReader(conn, CONNECTION_TIMEOUT)
        self.rfile = _LineReader(self._reader)
        self.wfile = conn.makefile("wb", self.wbufsize)

    def request_deadline(self):
        """Seconds the whole request may take: the server's ``request_deadline`` or the default."""
        return getattr(self.server, "request_deadline", None) or REQUEST_DEADLINE

    def serve(self):
        """Answer requests while they are already arriving; True when the connection stays open
        for a later one (the caller parks it), False when it is done (the caller closes it)."""
        deadline = self.request_deadline()
        while True:
            started = time.monotonic()
            self._whole_by = started + deadline
            self._reader.arm(started + min(deadline, HEADER_DEADLINE), CONNECTION_TIMEOUT)
            self._watch_head(True)
            self.close_connection = True
            self.handle_one_request()
            self.wfile.flush()
            if self.close_connection:
                return False
            if not self._reader.ready(self.rfile) and (
                    self._reader.eof or not LINGER_MS or not self._poller().poll(LINGER_MS)):
                return not self._reader.eof

    def _poller(self):
        """A poll object on this connection's socket (made on first use)."""
        poller = getattr(self, "_poll", None)
        if poller is None:
            poller = self._poll = select.poll()
            poller.register(self.connection.fileno(), select.POLLIN)
        return poller

    def handle(self):
        """Answer the requests of this connection until it is done (for callers of the
        standard socketserver protocol)."""
        while self.serve():
            pass

    def handle_one_request(self):
        """Read one request; answer 414 to over-long request lines and 400 to garbage or to
        ambiguous framing (see :mod:`guestkit_worker.http.framing`)."""
        self._body = None
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not self.raw_requestline:
            return  # the client closed between requests
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            self._discard_input()
            return
        length = self._parse_head()
        if length is False:
            return
        if not self._head_received():  # the server gave this connection's slot away meanwhile
            self.close_connection = True
            return
        self.requests += 1
        if self.requests >= getattr(self.server, "max_requests", MAX_REQUESTS_PER_CONNECTION):
            self.close_connection = True
        environ = self.get_environ()
        environ["RAW_URI"] = self.path  # the target as sent: PATH_INFO has %2F decoded into "/"
        if length is None:
            self.close_connection = True   # a body we cannot delimit: the app reads the stream
            stdin = self.rfile
        else:
            self._body = stdin = _Body(self.rfile, length)
            if "CONTENT_LENGTH" in environ:
                environ["CONTENT_LENGTH"] = str(length)  # without the blanks it may have had
        handler = _ServerHandler(stdin, self.wfile, _ERRORS, environ, multithread=True)
        handler.request_handler = self
        handler.run(self.server.get_app())
        if handler.status is not None:   # the app failed after its headers: end the connection
            self.close_connection = True
        if self._body is None or self._body.left:  # answered before the body was read
            self._discard_input()

    def _parse_head(self):
        """Parse the request line and headers: the body's length (None: Transfer-Encoding), or
        False when an error reply was sent instead (400 and closing for ambiguous framing)."""
        self.rfile.lines = []
        try:
            parsed = self.parse_request()
            lines = self.rfile.lines
        finally:
            self.rfile.lines = None
        if not parsed:  # parse_request already sent the error reply
            self._discard_input()
            return False
        try:
            return http_framing.body_length(lines, self.headers)
        except http_framing.FramingError as exc:
            self.send_error(400, None, str(exc))
            self._discard_input()
            return False

    def _watch_head(self, reading):
        """Tell the server that a request head starts (True) or ended (False) arriving; False
        when the server took the connection's slot back."""
        watch = getattr(self.server, "watch_head", None)
        return watch is None or watch(self.connection, self.client_address, reading)

    def _head_received(self):
        """The head is in: the rest of the request has the whole-request deadline."""
        self._reader.arm(self._whole_by, CONNECTION_TIMEOUT)
        return self._watch_head(False)

    def decide_keep_alive(self, handler):
        """Called as ``handler`` sends its headers: keep the connection only for a complete,
        delimited answer to a fully read request; say so in the ``Connection`` header."""
        headers = handler.headers
        keep = (not self.close_connection and self._body is not None and self._body.left == 0
                and "Content-Length" in headers and handler.status[:1] < "5"
                and not getattr(self.server, "stopping", False))  # shut down: this answer is the last
        self.close_connection = not keep
        modern = self.request_version != "HTTP/1.0"
        handler.http_version = "1.1" if modern else "1.0"
        if not keep:
            headers["Connection"] = "close"
        elif not modern:
            headers["Connection"] = "keep-alive"

    def close(self):
        """Close the connection's files and socket (the server calls this when it is done)."""
        self.close_files()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
        self.connection.close()

    def close_files(self):
        """Close the connection's buffered files, not its socket."""
        for stream in (self.wfile, self.rfile):
            with contextlib.suppress(OSError):
                stream.close()

    def _discard_input(self):
        """Send the answer and end our side, then read and drop what the client still sends:
        the rest of the body when its length is known, else anything until the client closes.
        Bounded by ``_DISCARD_MAX_BYTES``, ``_DISCARD_MAX_SECONDS`` (and the request's deadline)
        and a silence of ``_DISCARD_SILENCE``; the connection closes after it.

        Closing a socket with unread input makes the kernel answer with a reset, which breaks
        the client's sending and can destroy our answer before the client reads it.
        """
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            now = time.monotonic()
            self._reader.arm(min(self._reader.deadline, now + _DISCARD_MAX_SECONDS), _DISCARD_SILENCE)
            rest = self._body if self._body is not None else _Body(self.rfile, _DISCARD_MAX_BYTES)
            total = 0
            while total < _DISCARD_MAX_BYTES:
                chunk = rest.read(min(65536, _DISCARD_MAX_BYTES - total))
                if not chunk:
                    break
                total += len(chunk)
        except (OSError, ValueError):  # timeouts, resets, a closed file: the answer went out
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
