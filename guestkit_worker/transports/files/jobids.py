"""Which job ids run in which worker of a jobs directory: one byte locked per running job id in
``jobs/.processing/.running-ids.lock`` (:class:`RunningIds`)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import threading

from .layout import Layout

#: Linux's F_OFD_SETLK (Python 3.9+ names it); struct flock: type, whence, start, len, pid
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = "hhqqi4x"


class RunningIds:
    """Holds of running job ids across the workers of one jobs directory.

    A hold is an exclusive lock on one byte of the running-ids lock file, at an offset drawn
    from the job id's hash (an open-file-description lock, so other workers' locks exclude it
    whatever their process).  Nothing is written: no disk cost per job, and the kernel drops
    the lock when its holder dies.  This worker's running ids share one descriptor, opened
    once: they exclude each other here, in memory."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._fd: int | None = None
        self._held: dict = {}          # locked byte -> job ids running here
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open the lock file (at the transport's open, so the worker's descriptors stay
        constant)."""
        with self._lock:
            if self._fd is None:
                self._open()

    def close(self) -> None:
        """Close the lock file, which drops every hold still taken."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._held.clear()

    def hold(self, delivery) -> bool:
        """Hold ``delivery.job_id`` for this delivery.

        Returns:
            True when held (``delivery.id_lock`` records it); False, with
            ``delivery.id_busy`` set, while another delivery here or in another worker
            holds it.
        """
        job_id = delivery.job_id
        offset = _offset(job_id)
        with self._lock:
            held = self._held.get(offset)
            if held is None:
                if self._fd is None:
                    self._open()
                try:
                    fcntl.fcntl(self._fd, _F_OFD_SETLK, _byte_lock(fcntl.F_WRLCK, offset))
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        delivery.id_busy = True
                        return False
                    raise
                held = self._held[offset] = set()
            elif job_id in held:
                delivery.id_busy = True
                return False
            held.add(job_id)  # (another id whose byte this is runs here too: it is locked already)
        delivery.id_lock = (offset, job_id)
        return True

    def drop(self, delivery) -> None:
        """End the delivery's hold of its job id, if any (acknowledged, retried or released)."""
        lock = getattr(delivery, "id_lock", None)
        if lock is None:
            return
        delivery.id_lock = None
        offset, job_id = lock
        with self._lock:
            held = self._held.get(offset)
            if held is None:
                return
            held.discard(job_id)
            if held:
                return
            del self._held[offset]
            if self._fd is not None:
                fcntl.fcntl(self._fd, _F_OFD_SETLK, _byte_lock(fcntl.F_UNLCK, offset))

    def _open(self) -> None:
        self._fd = os.open(self.layout.running_ids_path,
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def _offset(job_id: str) -> int:
    """The byte of job_id: 62 bits of its SHA-256 (a collision between two ids running in two
    workers at once only makes one of them wait)."""
    return int.from_bytes(hashlib.sha256(job_id.encode("utf-8")).digest()[:8], "big") >> 2


def _byte_lock(kind: int, offset: int) -> bytes:
    """The struct flock of one byte."""
    return struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0)
