"""One HTTP connection of :mod:`guestkit_worker.wsgiserver`: read one request within its
deadlines, run the WSGI app, log quietly.

The TLS handshake (when the socket is wrapped) runs here, on the connection's thread.  A
connection silent for ``CONNECTION_TIMEOUT`` seconds per read, or that has not delivered its
whole request ``REQUEST_DEADLINE`` seconds after its thread took it, is dropped; request lines
over ``MAX_REQUEST_LINE`` bytes get 414.  Request logs go to this module's logger at DEBUG,
never to stderr, and no reply names the Python version.
"""

import io
import logging
import socket
import ssl
import threading
import time
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

logger = logging.getLogger(__name__)

#: Seconds a connection may stay silent (before its request, or per read) before it is dropped.
CONNECTION_TIMEOUT = 10.0
#: Seconds a client gets to deliver its whole request, so trickling bytes cannot pin a thread.
REQUEST_DEADLINE = 30.0
#: Longest request line accepted; longer ones get 414 (same limit as http.server).
MAX_REQUEST_LINE = 65536
#: Bounds on reading and discarding what a rejected client still sends (see _discard_input).
_DISCARD_MAX_BYTES = 1 << 20
_DISCARD_MAX_SECONDS = 2.0

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

    server_software = SERVER_NAME

    def log_exception(self, exc_info):
        """Log an exception raised by the WSGI app (the client gets a 500)."""
        logger.error("error while serving %s %s", self.environ.get("REQUEST_METHOD"),
                     self.environ.get("PATH_INFO"), exc_info=exc_info)


class RequestHandler(WSGIRequestHandler):
    """One connection, one request: timeout, TLS handshake in this thread, quiet logging."""

    wbufsize = -1  # buffer the reply so status line, headers and body leave in one send
    server_version = SERVER_NAME
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
            _DeadlineReader(conn, time.monotonic() + self.request_deadline(), CONNECTION_TIMEOUT))
        self.wfile = conn.makefile("wb", self.wbufsize)

    def request_deadline(self):
        """Seconds the whole request may take: the server's ``request_deadline`` or the default."""
        return getattr(self.server, "request_deadline", None) or REQUEST_DEADLINE

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
