"""Graceful closes from the accept loop of :mod:`guestkit_worker.http.server`, without a thread.

A connection the loop gives up on (refused, evicted from its slot, silent too long) gets its
answer, if any, then its sending side is shut (the client reads the answer and an end of
stream); the loop then reads and drops what the client still sends until the client closes,
``LINGER_SECONDS`` pass or ``LINGER_BYTES`` arrived, and only then closes the socket.  Closing
at once would make the kernel answer the client's request bytes, arriving or already
unread, with a reset that can destroy the answer before the client reads it.  A lingering
socket holds no slot; at most ``MAX_LINGERING`` linger at once (the oldest is closed first).
"""

import collections
import contextlib
import selectors
import socket
import time
from typing import Optional

__all__ = ["LINGER_BYTES", "LINGER_SECONDS", "MAX_LINGERING", "Lingering"]

#: Seconds a closed-by-us connection is read from while its client has not closed its side.
LINGER_SECONDS = 2.0
#: Bytes read and dropped from one such connection before it is closed all the same.
LINGER_BYTES = 1 << 20
#: Connections lingering at once per server; beyond, the one lingering longest is closed.
MAX_LINGERING = 256
#: Reads per wake-up of one lingering connection, so one busy client cannot stall the loop.
_READS_PER_WAKE = 4


class Lingering:
    """The lingering connections of one accept loop, registered in its selector ``sel`` with
    this object as their key's data; the loop calls :meth:`readable` and :meth:`expire`."""

    def __init__(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        self._socks = collections.OrderedDict()  # socket -> [deadline, bytes still accepted]

    def __len__(self) -> int:
        return len(self._socks)

    def close(self, sock: socket.socket, answer: Optional[bytes] = None) -> None:
        """Send ``answer`` (when given), shut the sending side, and linger (see the module)."""
        try:
            sock.setblocking(False)
            if answer:
                sock.send(answer)  # a small answer into an empty buffer: sent whole
            socket.socket.shutdown(sock, socket.SHUT_WR)  # the plain socket's, also under TLS
            self._sel.register(sock, selectors.EVENT_READ, self)
        except (OSError, ValueError):  # reset, or already gone: nothing to wait for
            sock.close()
            return
        if len(self._socks) >= MAX_LINGERING:
            oldest, _ = self._socks.popitem(last=False)
            self._forget(oldest)
        self._socks[sock] = [time.monotonic() + LINGER_SECONDS, LINGER_BYTES]

    def readable(self, sock: socket.socket) -> None:
        """Drop what arrived; close once the client has closed or sent too much."""
        entry = self._socks.get(sock)
        if entry is None:
            return
        for _ in range(_READS_PER_WAKE):
            try:
                data = socket.socket.recv(sock, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # reset by the client: nothing more to protect
                data = b""
            entry[1] -= len(data)
            if not data or entry[1] <= 0:
                del self._socks[sock]
                self._forget(sock)
                return

    def next_deadline(self) -> Optional[float]:
        """When the connection lingering longest must be closed (None when none lingers)."""
        for deadline, _ in self._socks.values():
            return deadline
        return None

    def expire(self, now: float) -> None:
        """Close the connections whose time is up."""
        while self._socks:
            sock, (deadline, _) = next(iter(self._socks.items()))
            if deadline > now:
                return
            del self._socks[sock]
            self._forget(sock)

    def close_all(self) -> None:
        """Close every lingering connection now (the server is stopping)."""
        while self._socks:
            sock, _ = self._socks.popitem(last=False)
            self._forget(sock)

    def _forget(self, sock):
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        sock.close()
