"""The queue of the file transport: listing jobs/, claiming a job file by renaming it into this
worker's processing directory, marking it started, putting it back (retry, release) and
archiving it.  A claim is an atomic rename, so two workers never run the same job file."""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from ...job.protocol import EXECUTION_DEFAULTS
from ...system import atomic
from ..base import Delivery, LeaseLost, TransportObserver, compact_job_bytes
from .claimed import ClaimedNames
from .jobfile import peek_priority, read_job_file
from .jobids import RunningIds
from .layout import ALTERNATE_NAMES, MAX_NAME_BYTES, RUNNING_SUFFIX, Layout, alternate_names, json_bytes
from .liveness import WorkerLock

log = logging.getLogger(__name__)

#: How long a job meant for another pool or worker is not looked at again.
FOREIGN_RECHECK_SECONDS = 60.0
#: At most this many such names are remembered (the oldest are forgotten first).
MAX_FOREIGN_NAMES = 10000
#: The priority of a job file that names none (or cannot be read before it is claimed).
DEFAULT_PRIORITY = EXECUTION_DEFAULTS["priority"]
#: A depth() this soon after a fetch that listed jobs/ and took nothing reuses that listing.
_DEPTH_REUSE_SECONDS = 0.1


class FileDelivery(Delivery):
    """A job file this worker owns until it is archived, retried or released."""

    __slots__ = ("path", "id_lock", "id_busy", "lost")

    def __init__(self, name: str, path: str, *, started: bool = False) -> None:
        super().__init__(name, started=started)
        self.path = path
        self.id_lock: tuple | None = None  # (byte, job id) of its job id's hold (RunningIds)
        self.id_busy = False   # ... or found it held by another worker
        self.lost = False      # found taken over by another worker (reported once)


class FileQueue:
    """Job files of one jobs directory, as one worker takes and gives them back.

    lock: this worker's liveness lock (nothing is claimed without it); names: the names in
    its processing dir; job_ids: the holds of running job ids (dropped when a job file
    leaves); observer: told of job files found taken over.  once: only the job files present
    at the first listing (and their retries) are ever taken."""

    def __init__(self, layout: Layout, lock: WorkerLock, names: ClaimedNames, job_ids: RunningIds,
                 observer: TransportObserver, *, max_job_bytes: int, durable: bool, once: bool,
                 poll_interval: float) -> None:
        self.layout, self.lock, self.names, self.job_ids = layout, lock, names, job_ids
        self.observer = observer
        self.max_job_bytes, self.durable, self.once = max_job_bytes, durable, once
        self.poll_interval = poll_interval
        self._scan_lock = threading.Lock()
        self._pending: collections.deque = collections.deque()  # names to try, file-name order
        self._scanned_at = float("-inf")
        self._waiting = 0                      # jobs/ names not meant for others at the last scan
        #: names released as meant for another pool or worker -> when (not taken for a while)
        self.foreign: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._eligible: set | None = None      # --once: the names present at start (and retries)
        self._given_back: dict = {}            # names released unstarted: tried after the others
        self._depth_fresh = False              # the last fetch ended on a listing and took nothing
        self._priorities: dict = {}            # name -> execution.priority, read once per name

    # -- listing ------------------------------------------------------------------------
    def _list_jobs_dir(self) -> list:
        try:
            with os.scandir(self.layout.jobs_dir) as it:
                names = [e.name for e in it if e.name.endswith(".json") and not e.name.startswith(".")]
        except OSError as exc:
            log.error("cannot list jobs dir %s: %s", self.layout.jobs_dir, exc)
            return []
        names.sort()
        return names

    def _rescan(self) -> None:
        """List jobs/ again (called with _scan_lock held)."""
        names = self._list_jobs_dir()
        now = time.monotonic()
        foreign = self.foreign
        while foreign and now - next(iter(foreign.values())) >= FOREIGN_RECHECK_SECONDS:
            foreign.popitem(last=False)  # oldest first: entries are added in time order
        if self._eligible is None and self.once:
            self._eligible = set(names)
        pending = self._by_priority([n for n in names if n not in foreign])
        self._waiting = len(pending)
        if self._given_back:  # a job given back (e.g. its outcome could not be stored) goes last
            back = self._given_back
            pending.sort(key=lambda n: back.get(n, 0.0))  # the others keep file-name order
        if self._eligible is not None:
            pending = [n for n in pending if n in self._eligible]
        self._pending = collections.deque(self.names.unclaimed(pending))
        self._scanned_at = now

    def _by_priority(self, names: list) -> list:
        """``names`` (in file-name order), higher ``execution.priority`` first; file-name order
        within a priority.  Each job file's priority is read once, when its name is first
        listed (names no longer listed are forgotten)."""
        known, jobs = self._priorities, self.layout.jobs_dir
        now = {}
        for n in names:
            p = known.get(n)
            if p is None:
                p = peek_priority(f"{jobs}/{n}", self.max_job_bytes, DEFAULT_PRIORITY)
            now[n] = p
        self._priorities = now
        if any(p != DEFAULT_PRIORITY for p in now.values()):
            names.sort(key=lambda n: -now[n])  # stable: file-name order within a priority
        return names

    def _refresh_after(self) -> float:
        return min(self.poll_interval, 0.5)

    def depth(self) -> int:
        """Job files waiting in jobs/, less those released as meant for others."""
        with self._scan_lock:
            # a fetch that found nothing listed jobs/ just now (the consumer asks right after
            # it): that listing is the depth; an idle worker lists jobs/ once per look, not twice
            if not (self._depth_fresh and time.monotonic() - self._scanned_at < _DEPTH_REUSE_SECONDS):
                self._rescan()
            self._depth_fresh = False
            return self._waiting

    # -- claiming -----------------------------------------------------------------------
    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        """Claim up to max_count job files.  Nothing without this worker's lock (never opened,
        or closed): a job claimed into the processing dir of a worker that holds no lock would
        be taken for a dead worker's."""
        if not self.lock.held:
            return []
        end = time.monotonic() + timeout
        out: list = []
        first = True
        while True:
            with self._scan_lock:
                # after a wait always list again; at first only when nothing is left to try
                listed = (not first or not self._pending
                          or time.monotonic() - self._scanned_at >= self._refresh_after())
                if listed:
                    self._rescan()
                first = False
                while self._pending and len(out) < max_count:
                    delivery = self.claim(self._pending.popleft())
                    if delivery is not None:
                        out.append(delivery)
                self._depth_fresh = listed and not out
                exhausted = self._eligible is not None and not self._pending
            left = end - time.monotonic()
            if out or exhausted or left <= 0:
                return out
            time.sleep(min(self._refresh_after(), left))

    def claim(self, name: str) -> FileDelivery | None:
        """Move jobs/NAME into this worker's processing dir.

        Returns:
            The delivery, or None when the file is gone (another worker claimed it, its
            producer removed it) or a job file of that name is here already (claimed after it).
        """
        self._depth_fresh = False
        if self._eligible is not None:
            self._eligible.discard(name)
        self._given_back.pop(name, None)
        if not self.names.reserve(name):
            return None
        dst = f"{self.layout.processing}/{name}"
        try:
            os.rename(f"{self.layout.jobs_dir}/{name}", dst)  # the name is reserved: nothing to replace
        except OSError as exc:
            self.names.discard(name)
            if exc.errno != errno.ENOENT:  # ENOENT: another worker claimed it, or its producer removed it
                log.error("cannot claim %s: %s", name, exc)
            return None
        return FileDelivery(name, dst)

    def read(self, delivery: Delivery) -> bytes:
        return read_job_file(delivery.path, delivery.name, self.max_job_bytes)

    def still_ours(self, delivery: Delivery) -> bool:
        """True while the delivery's job file is in this worker's processing dir.  Only a worker
        whose lock was lost while it lived (its lock file removed) can find it gone: another
        worker took the job over, so this one must neither store its outcome nor queue the job
        again (:meth:`fenced`)."""
        return os.path.lexists(delivery.path)

    def fenced(self, delivery: Delivery) -> LeaseLost:
        """The error for a delivery another worker took over (reported to the observer once)."""
        if not delivery.lost:
            delivery.lost = True
            self.observer.lease_lost()
        return LeaseLost(f"job file {delivery.name} is no longer in this worker's processing directory: "
                         "another worker took it over (was this worker's lock file removed while it ran?)")

    def extend_lease(self, delivery: Delivery) -> bool:
        """No lease: a claim lasts as long as this worker's lock; False once the job was taken
        over (see :meth:`still_ours`)."""
        return self.still_ours(delivery)

    def mark_started(self, delivery: Delivery) -> None:
        running = delivery.path + RUNNING_SUFFIX
        os.rename(delivery.path, running)  # within our processing dir, under a reserved name
        delivery.path = running
        delivery.started = True

    # -- giving back --------------------------------------------------------------------
    def retry(self, delivery: Delivery, doc: Mapping) -> None:
        """Write doc as a new job file in jobs/ and drop the delivered one."""
        if not self.still_ours(delivery):
            raise self.fenced(delivery)  # queued again by its new owner, if at all
        data = compact_job_bytes(doc)  # one line: an indented rewrite can outgrow --max-job-size
        submitted = os.lstat(delivery.path).st_mtime_ns
        for dst in self._queue_names(delivery.name):
            try:
                atomic.write_bytes(dst, data, durable=self.durable, mode=0o640, overwrite=False)
                break
            except FileExistsError:
                continue
        with contextlib.suppress(OSError):  # the job's submission time (its status's submitted_at)
            os.utime(dst, ns=(submitted, submitted), follow_symlinks=False)
        os.unlink(delivery.path)
        self._left(delivery)
        self._depth_fresh = False
        if self._eligible is not None:
            self._eligible.add(os.path.basename(dst))  # a one-shot run waits for its retries

    def release(self, delivery: Delivery, *, not_for_me: bool = False) -> None:
        """Move the job file back to jobs/ (remembered for a while when not_for_me)."""
        for dst in self._queue_names(delivery.name):
            try:
                atomic.rename_noreplace(delivery.path, dst)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:  # taken over meanwhile: its job id and name are not ours
                self._left(delivery)
                raise
        self._left(delivery)
        with self._scan_lock:
            self._depth_fresh = False
            remembered = self.foreign if not_for_me else self._given_back
            remembered[os.path.basename(dst)] = time.monotonic()
            if delivery.id_busy and self._eligible is not None:  # a one-shot run waits for it to run
                self._eligible.add(os.path.basename(dst))          # after the other delivery of its id
            while len(remembered) > MAX_FOREIGN_NAMES:
                remembered.pop(next(iter(remembered)))

    def _queue_names(self, name: str) -> Iterator[str]:
        """Where a job file goes back to: its own name, or, when a producer has meanwhile put a
        new job file under that name, an alternate one (never over someone else's job): the
        first free of STEM.1.json ... STEM.4.json, which a lookup by id probes, then
        STEM.<time_ns>.json.  STEM is the name without an alternate's own suffix (an alternate
        goes back to STEM.json first when that is free)."""
        jobs = self.layout.jobs_dir
        stem = name[:-len(".json")] if name.endswith(".json") else name
        head, dot, tail = stem.rpartition(".")
        if dot and head and tail.isdigit() and (int(tail) <= ALTERNATE_NAMES or len(tail) >= 16):
            stem = head  # already an alternate: JOB.2.json goes back as JOB.json when that is free
            yield os.path.join(jobs, f"{stem}.json")
        yield os.path.join(jobs, name)
        for alternate in alternate_names(stem):
            yield os.path.join(jobs, alternate)
        while True:
            yield os.path.join(jobs, f"{stem}.{time.time_ns()}.json")

    def archive(self, delivery: Delivery, failed: bool, reason: dict | None) -> str:
        """Move the job file to done/ or failed/, with the reason document (as given) beside it.

        Returns:
            Where the job file went.

        Raises:
            OSError: it could not be moved (it stays held); a reason that cannot be written is
                logged only.
        """
        name = delivery.name
        raw = os.fsencode(name)
        if len(raw) > MAX_NAME_BYTES:  # keep room for the suffixes (the reason names the original)
            digest = hashlib.sha256(raw).hexdigest()[:16].encode()
            name = os.fsdecode(raw[:MAX_NAME_BYTES - 30] + b"~" + digest + b".json")
        dst = f"{self.layout.failed_dir if failed else self.layout.done_dir}/{name}"
        try:
            atomic.rename_noreplace(delivery.path, dst)  # two workers archiving the same name: both kept
        except FileExistsError:
            dst = f"{dst}.{time.time_ns()}"
            atomic.rename_noreplace(delivery.path, dst)
        self._left(delivery)
        if reason is not None:
            try:
                atomic.write_bytes(dst + ".reason.json", json_bytes(reason), durable=False)
            except OSError as exc:
                log.error("job %s: cannot write reason file for %s: %s", delivery.job_id or "-", dst, exc)
        return dst

    def _left(self, delivery: Delivery) -> None:
        """The delivery's job file left the processing dir: free its name and its job id."""
        self.names.discard(delivery.name)
        self.job_ids.drop(delivery)
