"""Taking over the job files of dead workers in the file transport (the ``reclaim`` of
:class:`~..base.JobQueue`): first those an earlier life of this worker id left in its own
processing dir, then those in the processing dirs of workers whose lock is free."""

from __future__ import annotations

import contextlib
import logging
import os

from ...system import atomic
from ..base import ReclaimDecision, TransportObserver, UnrecoverableReason
from .claimed import ClaimedNames
from .layout import RUNNING_SUFFIX, Layout
from .liveness import WorkerLock
from .queue import FileDelivery, FileQueue

log = logging.getLogger(__name__)


class FileReclaimer:
    """Hands the job files of dead workers to the worker's decision, one at a time.

    lock: this worker's liveness lock (and the test of others'); names: the names in this
    worker's processing dir, where taken-over files are moved; queue: archives a file whose
    decision failed; observer: told of each file taken over."""

    def __init__(self, layout: Layout, lock: WorkerLock, names: ClaimedNames, queue: FileQueue,
                 observer: TransportObserver) -> None:
        self.layout, self.lock, self.names, self.queue = layout, lock, names, queue
        self.observer = observer
        self._own_leftovers: list = []

    def adopt(self, leftovers: list) -> None:
        """Job files an earlier life of this worker id left in its processing dir (found when
        the lock was taken): reserved now, handed over by the next :meth:`reclaim`."""
        self.names.reserve_all(n[:-len(RUNNING_SUFFIX)] if n.endswith(RUNNING_SUFFIX) else n
                               for n in leftovers)
        self._own_leftovers = list(leftovers)

    def reclaim(self, decide: ReclaimDecision, limit: int,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        """See :meth:`~..base.JobQueue.reclaim`.  Nothing without this worker's lock: its
        processing dir is not its own to move job files into."""
        if not self.lock.held:
            return 0
        count = 0
        leftovers, self._own_leftovers = self._own_leftovers, []
        L = self.layout
        for name in leftovers:
            count += self._hand_over(decide, unrecoverable, L.processing, name, L.worker_id, own=True)
        try:
            entries = os.listdir(L.processing_root)
        except OSError:
            return count
        for entry in entries:
            path = os.path.join(L.processing_root, entry)
            if count >= limit or entry.endswith(".lock") or entry == L.worker_id or not os.path.isdir(path):
                continue
            with self.lock.dead_worker(path) as dead:
                if dead:
                    count += self._empty(decide, unrecoverable, path, entry)
        return count

    def _empty(self, decide: ReclaimDecision, unrecoverable: UnrecoverableReason | None, path: str,
               worker: str) -> int:
        """Hand over every job file in a dead worker's dir (its lock held), then remove the dir
        and its lock file."""
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            # another worker recovered it between our listing and our lock (and removed the
            # lock file we have just created again)
            with contextlib.suppress(OSError):
                os.unlink(path + ".lock")
            return 0
        count = 0
        for name in names:
            if not name.startswith("."):
                count += self._hand_over(decide, unrecoverable, path, name, worker, own=False)
        with contextlib.suppress(OSError):
            os.rmdir(path)
            os.unlink(path + ".lock")
        return count

    def _hand_over(self, decide: ReclaimDecision, unrecoverable: UnrecoverableReason | None,
                   directory: str, name: str, dead: str, *, own: bool) -> int:
        """Move one job file of a dead worker into our processing dir and let decide dispose of it."""
        started = name.endswith(RUNNING_SUFFIX)
        job_name = name[:-len(RUNNING_SUFFIX)] if started else name
        mine = os.path.join(self.layout.processing, name)
        if own:
            if not os.path.lexists(mine):
                self.names.discard(job_name)
                return 0
        else:
            if not self.names.reserve(job_name):  # a job file of that name is ours right now: next time
                return 0
            try:
                atomic.rename_noreplace(os.path.join(directory, name), mine)  # we own it now
            except OSError:
                self.names.discard(job_name)
                return 0
        delivery = FileDelivery(job_name, mine, started=started)
        self.observer.jobs_reclaimed()
        log.warning("recovering %s left by %s (%s)", job_name,
                    "an earlier run of this worker id" if own else f"dead worker {dead}",
                    "handler had started" if started else "not started")
        try:
            decide(delivery, dead)
        except OSError as exc:  # e.g. disk full: tried again at the next reclaim
            log.error("recovering %s failed (%s); trying again later", job_name, exc)
            if os.path.lexists(delivery.path):
                self._own_leftovers.append(os.path.basename(delivery.path))
        except Exception as exc:
            log.exception("recovering %s failed; the job file is archived as failed", job_name)
            self._archive_poison(delivery, dead, exc, unrecoverable)
        return 1

    def _archive_poison(self, delivery: FileDelivery, dead: str, exc: BaseException,
                        unrecoverable: UnrecoverableReason | None) -> None:
        """Archive a job file whose decision raised, with the reason the worker builds."""
        reason = None
        if unrecoverable is not None:
            try:
                reason = unrecoverable(delivery, dead, exc)
            except Exception:
                log.exception("recovering %s: building its reason failed; archived without one",
                              delivery.name)
        try:
            self.queue.archive(delivery, True, reason)
        except OSError as err:
            log.error("cannot archive %s: %s; it stays in %s", delivery.name, err, delivery.path)
