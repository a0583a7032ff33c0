"""The refusal path of :mod:`guestkit_worker.wsgiserver`: when every connection slot is busy
answering a request, a newcomer gets a plain ``503`` with ``Retry-After`` at once (on TLS it is
just closed), is counted, and a warning is logged at most once a minute."""

import logging
import socket
import threading
import time
from typing import Callable, Optional

logger = logging.getLogger("guestkit_worker.wsgiserver")  # the server the notes are about

__all__ = ["BUSY", "Refusal"]

#: At most one warning per this many seconds about refused connections.
_REFUSAL_LOG_SECONDS = 60.0

_BUSY_BODY = b"503 busy: too many connections; retry later\n"
#: The whole answer sent to a refused plain-HTTP connection unless the caller gives another.
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
        % (len(_BUSY_BODY), _BUSY_BODY))


class Refusal:
    """Refuse connections of the server ``name`` (limit ``max_connections``) with ``answer``;
    ``on_refused()`` is called for each one.  ``count`` is the number refused so far."""

    def __init__(self, name: str, max_connections: int, answer: bytes = BUSY,
                 on_refused: Optional[Callable[[], None]] = None) -> None:
        self._name = name
        self._max_connections = max_connections
        self._answer = answer
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._last_log = None
        self.count = 0

    def refuse(self, conn: socket.socket, tls: bool) -> None:
        """Answer ``conn`` with the refusal (plain HTTP) or just close it (``tls``)."""
        with self._lock:
            self.count += 1
            now = time.monotonic()
            warn = self._last_log is None or now - self._last_log >= _REFUSAL_LOG_SECONDS
            if warn:
                self._last_log = now
        if warn:
            logger.warning("%s: all %d connections busy; refusing new ones (next note in %.0f s)",
                           self._name, self._max_connections, _REFUSAL_LOG_SECONDS)
        if self._on_refused is not None:
            try:
                self._on_refused()
            except Exception:  # a counter must not stop the accept loop
                logger.exception("%s: on_refused failed", self._name)
        try:
            if not tls:
                conn.setblocking(False)
                try:
                    conn.recv(65536)  # what already arrived, so closing does not reset the answer
                except OSError:
                    pass
                conn.send(self._answer)
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()
