"""Liveness and recovery for the file transport.  Each worker holds an flock on
jobs/.processing/WORKER.lock while it lives; a processing directory whose lock is free belongs
to a dead worker, and the jobs in it are taken over by whoever locks it first."""

from __future__ import annotations

import fcntl
import logging
import os

from ...job.errors import ConfigError
from ...system import atomic
from ..base import ReclaimDecision
from .layout import RUNNING_SUFFIX
from .queue import FileDelivery

log = logging.getLogger(__name__)


class FileLiveness:
    """Mixin of FileTransport: the liveness lock and the reclaim of dead workers' jobs."""

    _lock_fd = None
    _own_leftovers: list = []

    def _take_lock(self) -> None:
        """Lock before our processing dir exists: a worker recovering dead workers' claims must
        never take a starting worker's empty dir (and its lock) for a dead one's.  Raises
        ConfigError when a live worker has our id."""
        L = self.layout
        fd = os.open(L.lock_path(L.worker_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another worker with id {L.worker_id} is running") from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        L.make_dir(L.processing)
        # Holding our lock, whatever is in our own processing dir was left by an earlier
        # process with this worker id (a stable id such as the host name) that died.
        self._own_leftovers = sorted(n for n in os.listdir(L.processing) if not n.startswith("."))
        with self._here_lock:
            self._here |= {n[:-len(RUNNING_SUFFIX)] if n.endswith(RUNNING_SUFFIX) else n
                           for n in self._own_leftovers}

    def _drop_lock(self) -> None:
        # remove the dir and the lock file while still holding the lock, so nobody locks the
        # file we are about to unlink
        L = self.layout
        if self._lock_fd is None:
            return
        for path, remove in ((L.processing, os.rmdir), (L.lock_path(L.worker_id), os.unlink)):
            try:
                remove(path)
            except OSError:
                pass  # not empty (a stuck job): left for recovery
        os.close(self._lock_fd)
        self._lock_fd = None

    def worker_alive(self, worker_id: str) -> bool:
        """True while the worker with this id holds its lock (this worker: while open)."""
        L = self.layout
        if worker_id == L.worker_id:
            return self._lock_fd is not None
        try:
            fd = os.open(L.lock_path(worker_id), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock taken just now
        return False

    def reclaim(self, decide: ReclaimDecision, limit: int = 1 << 30) -> int:
        if self._lock_fd is None:
            return 0  # without our lock our processing dir is not ours to move jobs into
        count = 0
        leftovers, self._own_leftovers = self._own_leftovers, []
        L = self.layout
        for name in leftovers:
            count += self._hand_over(decide, L.processing, name, L.worker_id, own=True)
        try:
            entries = os.listdir(L.processing_root)
        except OSError:
            return count
        for entry in entries:
            path = os.path.join(L.processing_root, entry)
            if count >= limit or entry.endswith(".lock") or entry == L.worker_id or not os.path.isdir(path):
                continue
            lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # that worker is alive
                try:
                    names = sorted(os.listdir(path))
                except FileNotFoundError:
                    # another worker recovered it between our listing and our lock (and removed
                    # the lock file we have just created again)
                    try:
                        os.unlink(path + ".lock")
                    except OSError:
                        pass
                    continue
                for name in names:
                    if not name.startswith("."):
                        count += self._hand_over(decide, path, name, entry, own=False)
                try:
                    os.rmdir(path)
                    os.unlink(path + ".lock")
                except OSError:
                    pass
            finally:
                os.close(lock_fd)
        return count

    def _hand_over(self, decide: ReclaimDecision, directory: str, name: str, dead: str, *, own: bool) -> int:
        """Move one job file of a dead worker into our processing dir and let decide dispose of it."""
        started = name.endswith(RUNNING_SUFFIX)
        job_name = name[:-len(RUNNING_SUFFIX)] if started else name
        mine = os.path.join(self.layout.processing, name)
        if own:
            if not os.path.lexists(mine):
                self._unreserve(job_name)
                return 0
        else:
            if not self._reserve(job_name):  # a job file of that name is ours right now: next time
                return 0
            try:
                atomic.rename_noreplace(os.path.join(directory, name), mine)  # we own it now
            except OSError:
                self._unreserve(job_name)
                return 0
        delivery = FileDelivery(job_name, mine, started=started)
        log.warning("recovering %s left by %s (%s)", job_name,
                    "an earlier run of this worker id" if own else f"dead worker {dead}",
                    "handler had started" if started else "not started")
        try:
            decide(delivery, dead)
        except OSError as exc:  # e.g. disk full: tried again at the next reclaim
            log.error("recovering %s failed (%s); trying again later", job_name, exc)
            if os.path.lexists(delivery.path):
                self._own_leftovers.append(os.path.basename(delivery.path))
        except Exception:
            log.exception("recovering %s failed; the job file is archived as failed", job_name)
            try:
                self._archive(delivery, True, {"job_file": job_name, "status": "rejected",
                                               "worker_id": self.layout.worker_id,
                                               "error": {"code": "RECOVERY_FAILED",
                                                         "message": "could not be recovered"}})
            except OSError as exc:
                log.error("cannot archive %s: %s; it stays in %s", job_name, exc, mine)
        return 1
