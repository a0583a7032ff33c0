"""Liveness in the file transport: each worker holds an flock on jobs/.processing/WORKER.lock
while it lives (:class:`WorkerLock`); a processing directory whose lock is free belongs to a
dead worker, and whoever locks it first takes its jobs over (:mod:`.reclaim`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator

from ...job.errors import ConfigError
from .layout import Layout

_LOCK_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW


class WorkerLock:
    """This worker's liveness lock, and the test of other workers' locks."""

    def __init__(self, layout: Layout, pool: str | None = None) -> None:
        self.layout = layout
        self.pool = pool
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between :meth:`take` and :meth:`drop`: the processing dir is this worker's."""
        return self._fd is not None

    def take(self) -> list:
        """Lock, then create this worker's processing dir.

        The lock comes first: a worker recovering dead workers' claims must never take a
        starting worker's empty dir (and its lock) for a dead one's.

        Returns:
            The names of the job files already in the processing dir, sorted: holding the
            lock, they were left by an earlier process with this worker id (a stable id such
            as the host name) that died.

        Raises:
            ConfigError: a live worker has this worker id.
        """
        L = self.layout
        fd = os.open(L.lock_path(L.worker_id), _LOCK_FLAGS | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another worker with id {L.worker_id} is running") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write_identity(fd)
        L.make_dir(L.processing)
        return sorted(n for n in os.listdir(L.processing) if not n.startswith("."))

    def _write_identity(self, fd: int) -> None:
        """Who holds the lock, for the ``workers`` command: pool, host and pid, as JSON in the
        lock file (its mtime, refreshed by :meth:`touch`, is the last sign of life)."""
        me = {"worker_id": self.layout.worker_id, "pool": self.pool, "host": socket.gethostname(),
              "pid": os.getpid()}
        with contextlib.suppress(OSError):  # only information: the flock is the liveness
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)

    def touch(self) -> None:
        """Set the lock file's mtime to now: the last sign of life ``workers`` shows (the
        daemon does it with every recovery pass, every 30 s)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.utime(self._fd)

    def drop(self) -> None:
        """Remove the processing dir (when empty) and the lock file, then unlock.  Both go while
        the lock is still held, so nobody locks the file about to be unlinked."""
        L = self.layout
        if self._fd is None:
            return
        for path, remove in ((L.processing, os.rmdir), (L.lock_path(L.worker_id), os.unlink)):
            with contextlib.suppress(OSError):  # not empty (a stuck job): left for recovery
                remove(path)
        os.close(self._fd)
        self._fd = None

    def worker_alive(self, worker_id: str) -> bool:
        """True while the worker with this id holds its lock (this worker: while it holds it)."""
        L = self.layout
        if worker_id == L.worker_id:
            return self.held
        return lock_held(L.lock_path(worker_id))

    @staticmethod
    @contextlib.contextmanager
    def dead_worker(worker_dir: str) -> Iterator[bool]:
        """Lock another worker's lock file for as long as the block runs.

        Yields:
            True when the lock was taken (that worker is dead and its dir is ours to empty);
            False when it is alive.
        """
        fd = os.open(worker_dir + ".lock", _LOCK_FLAGS | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


def lock_held(path: str) -> bool:
    """True while some process holds the flock of the lock file ``path`` (this process too,
    through another descriptor); False when it is free or missing: that worker is dead."""
    try:
        fd = os.open(path, _LOCK_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return False
