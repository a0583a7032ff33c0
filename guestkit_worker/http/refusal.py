"""The refusal path of :mod:`guestkit_worker.http.server`: when no connection slot can be had, a
newcomer gets a plain ``503`` with ``Retry-After`` at once (on TLS no answer), is counted, and a
warning is logged at most once a minute.  The server sends the answer and closes gracefully
(:mod:`guestkit_worker.http.linger`)."""

import logging
import threading
import time
from typing import Callable, Optional

logger = logging.getLogger(__name__)

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
        #: the whole answer of a refused plain-HTTP connection
        self.answer = answer
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._last_log = None
        self.count = 0

    def refuse(self, tls: bool) -> Optional[bytes]:
        """Count a refused connection and return what to answer it (None on ``tls``: an answer
        would need a handshake); the caller sends it and closes the connection gracefully."""
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
        return None if tls else self.answer
