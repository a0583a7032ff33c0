"""The connection threads of :mod:`guestkit_worker.http.server`: at most ``limit`` threads,
created when a dispatched connection finds none idle and ended after ``THREAD_IDLE_SECONDS``
without work, each serving one connection at a time with the function it was given."""

import queue
import threading
from typing import Any, Callable

__all__ = ["THREAD_IDLE_SECONDS", "ConnectionThreads"]

#: Seconds a connection thread waits for another connection before it exits.
THREAD_IDLE_SECONDS = 5.0


class ConnectionThreads:
    """Serve dispatched ``(socket, state)`` pairs with ``serve(socket, state)`` on at most
    ``limit`` threads named ``name``; :meth:`stop` ends the idle ones and, after their current
    connection, the busy ones."""

    def __init__(self, serve: Callable[[Any, Any], Any], limit: int, name: str) -> None:
        self._serve = serve
        self.limit = limit
        self._name = name
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._threads = 0       # connection threads alive
        self._idle = 0          # connection threads waiting for work
        self._pending = 0       # connections handed over, not yet taken by a thread

    @property
    def threads(self) -> int:
        """Connection threads alive."""
        with self._lock:
            return self._threads

    def dispatch(self, sock, state) -> None:
        """Hand a connection with bytes waiting to an idle thread, or to a new one."""
        sock.setblocking(True)
        with self._lock:
            self._pending += 1
            spawn = self._pending > self._idle and self._threads < self.limit
            if spawn:
                self._threads += 1
                self._idle += 1
        self._queue.put((sock, state))
        if spawn:
            threading.Thread(target=self._connection_thread, daemon=True,
                             name=f"{self._name}-conn").start()

    def stop(self) -> None:
        """Ask every thread alive now to exit once it has no connection in hand."""
        for _ in range(self.threads):
            self._queue.put(None)

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
            sock, state = item
            try:
                self._serve(sock, state)
            finally:
                with self._lock:
                    self._idle += 1
