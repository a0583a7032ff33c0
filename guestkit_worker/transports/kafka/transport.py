"""The Kafka transport's worker side: opening (topics, the state log's replica, the jobs
topic's group, this worker's life), submission, delivery, leases, retry and release (the
:class:`~..base.JobQueue` half; taking over is :mod:`.reclaim`, results and job state
:mod:`.store`).

Every change is a command in the pool's state topic, decided by the order the broker wrote it
(:mod:`.state`): a delivery is a claim with a generation and a lease, renewed by
``extend_lease`` and fenced everywhere else, so a worker that lost its claim can neither
renew, store, retry nor release it.  A worker signs its life every lease/4 (a heartbeat
command); its idempotency reservations end with it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ...job.errors import ConfigError, JobFileError
from ...job.facts import job_facts
from ...job.timestamps import stamp as now_iso
from ...settings.defaults import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_JOB_BYTES,
    DEFAULT_RESULT_TTL,
)
from ..base import (
    Delivery,
    LeaseLost,
    StopRequested,
    SubmitReceipt,
    Transport,
    TransportObserver,
    compact_job_bytes,
    job_bytes,
)
from ..common import digest
from ..records import WorkerInfo
from .admin import PoolAdmin
from .dead import DeadMixin
from .intake import Intake, facts_of
from .reclaim import ReclaimMixin
from .settings import KafkaSettings, Topics
from .state import b64
from .statelog import StateLog
from .store import StoreMixin

log = logging.getLogger(__name__)

#: how long a job released as meant for another worker is not handed to this one again
FOREIGN_RECHECK_SECONDS = 60.0
#: seconds a call waits for the broker by default
DEFAULT_TIMEOUT = 10.0


def _iso(seconds: float) -> str:
    at = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KafkaDelivery(Delivery):
    """One hand-out of an entry to this worker (``name`` is the entry's)."""

    __slots__ = ("entry", "raw", "size", "generation", "renewed", "lost")

    def __init__(self, handed: dict, raw: bytes, size: int) -> None:
        super().__init__(f"entry-{handed['entry']}", started=bool(handed["started"]),
                         delivery_count=int(handed["deliveries"]))
        self.entry, self.raw, self.size, self.generation = handed["entry"], raw, size, handed["generation"]
        self.job_id = handed.get("job_id")
        self.no_result_yet = bool(handed.get("fresh"))
        self.renewed = time.monotonic()  # local time of the last renewal the state took
        self.lost = False


class KafkaTransport(DeadMixin, ReclaimMixin, StoreMixin, Transport):
    """Jobs and results of pool ``pool`` on a Kafka cluster, as worker ``worker_id``.

    settings: the cluster and its credentials; lease_seconds: a delivery not renewed this long
    (broker time) may be taken over; max_deliveries: an entry taken over more often is a dead
    letter; result_ttl: maintain() forgets a finished job this long after it ended;
    max_job_bytes: read() refuses a larger document; timeout: seconds a call waits for the
    broker; observer: told of takeovers, lost deliveries, dead letters and errors."""

    protected_paths = ()
    local_dirs: Mapping[str, str] = {}
    #: the take command marks what it hands out started (one round trip less per job): a worker
    #: that dies holding a taken job has used one of its attempts
    starts_on_fetch = True

    def __init__(self, settings: KafkaSettings, worker_id: str, *, pool: str = "default",
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                 result_ttl: float = DEFAULT_RESULT_TTL, max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
                 timeout: float = DEFAULT_TIMEOUT, observer: TransportObserver | None = None) -> None:
        settings.check()
        self.settings, self.topics, self.worker_id = settings, Topics(pool), worker_id
        self.lease_seconds = float(lease_seconds)
        self.max_deliveries, self.result_ttl = int(max_deliveries), float(result_ttl)
        self.max_job_bytes, self.timeout = int(max_job_bytes), float(timeout)
        self.observer = observer if observer is not None else TransportObserver()
        self._log: StateLog | None = None
        self._admin: PoolAdmin | None = None
        self._intake: Intake | None = None
        self._start_lock = threading.Lock()
        self._life: str | None = None
        self._held: set = set()   # generations of the deliveries this worker holds
        self._closed = True
        self._beat_stop = threading.Event()

    # -- the connection ------------------------------------------------------------------
    def _state_log(self) -> StateLog:
        """The state log's replica, started (topics made, replayed) on first use."""
        with self._start_lock:
            if self._log is None:
                admin = PoolAdmin(self.settings, self.topics, self.timeout)
                admin.ensure_topics()
                statelog = StateLog(self.settings, self.topics, timeout=self.timeout)
                statelog.start()
                self._admin, self._log = admin, statelog
            return self._log

    def _call(self, cmd: dict, operation: str) -> Any:
        try:
            return self._state_log().call(cmd)
        except OSError:
            self.observer.transport_error(operation)
            raise

    def _synced(self, operation: str) -> StateLog:
        """The replica, having applied every change made before this call."""
        try:
            statelog = self._state_log()
            statelog.sync()
        except OSError:
            self.observer.transport_error(operation)
            raise
        return statelog

    # -- life ----------------------------------------------------------------------------
    @property
    def identity_lost(self) -> str | None:
        """Set when another process took this worker id (its hello came after this life
        lapsed, e.g. while this process was stopped): this worker then stops."""
        statelog = self._log
        if statelog is None or self._closed or self._life is None:
            return None
        with statelog.cond:
            cur = statelog.state.lives.get(self.worker_id)
            other = cur.life if cur is not None and cur.life != self._life else None
        if other is None:
            return None
        return (f"worker id {self.worker_id} of pool {self.topics.pool} was taken over by another live "
                "process (its life in the pool's state is not this one's)")

    def describe(self) -> str:
        return f"{self.settings.describe()}, topics guestkit.{self.topics.pool}.*, worker {self.worker_id}"

    def open(self) -> None:
        """Join the pool as a live worker: wait up to a lease and a half for a predecessor with
        this worker id (one that crashed) to lapse; ConfigError if it is still alive."""
        statelog = self._state_log()
        life, end = uuid.uuid4().hex, time.monotonic() + self.lease_seconds * 1.5
        while self._call({"op": "hello", "w": self.worker_id, "life": life, "lease": self.lease_seconds},
                         "open").get("busy"):
            if time.monotonic() > end:
                raise ConfigError(f"worker id {self.worker_id} is in use by a live worker of pool "
                                  f"{self.topics.pool}; give every worker of a fleet its own --worker-id")
            log.warning("worker id %s: a live worker of pool %s has it (a predecessor that crashed?); "
                        "waiting up to a lease for it to lapse", self.worker_id, self.topics.pool)
            if self._pause(min(1.0, self.lease_seconds / 4)):
                raise StopRequested(f"stop requested while waiting for worker id {self.worker_id} to be free")
        self._life, self._held, self._closed = life, set(), False
        self._beat_stop.clear()
        threading.Thread(target=self._beat_loop, args=(life,), name="kafka-beat", daemon=True).start()
        self._intake = Intake(self.settings, self.topics, statelog, worker_id=self.worker_id,
                              max_job_bytes=self.max_job_bytes, digest=digest,
                              on_error=self.observer.transport_error, on_dead=self._publish_dead)
        self._intake.start()

    def _pause(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stopping():
                return True
            time.sleep(0.05)
        return self.stopping()

    def _beat_loop(self, life: str) -> None:
        """Sign this life every lease/4 (without waiting for an answer)."""
        while not self._beat_stop.wait(self.lease_seconds / 4):
            try:
                self._state_log().send({"op": "beat", "w": self.worker_id, "life": life})
            except OSError:
                self.observer.transport_error("beat")

    def close(self) -> None:
        """Leave the pool (idempotent): held deliveries stay, for other workers to take over at
        once (this worker is not alive any more)."""
        self._beat_stop.set()
        if self._intake is not None:
            self._intake.close()
            self._intake = None
        if not self._closed and self._log is not None:
            self._closed = True
            try:
                self._log.call({"op": "bye", "w": self.worker_id, "life": self._life})
            except OSError:
                log.warning("worker %s: could not say goodbye to pool %s; its jobs are taken over a lease "
                            "later", self.worker_id, self.topics.pool)
        self._closed = True
        with self._start_lock:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._admin is not None:
                self._admin.close()
                self._admin = None

    def health(self) -> dict:
        try:
            self._synced("health")
        except OSError as exc:
            return {"transport": (False, f"{self.settings.describe()}: {exc}")}
        return {"transport": (True, f"{self.settings.describe()} reachable, state of pool {self.topics.pool} "
                                    "read to its end")}

    # -- submission ----------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        job_id = doc["job_id"]
        body = job_bytes(doc, raw, self.max_job_bytes)  # JobTooLarge: never queued unreadable
        cmd = {"op": "submit", "job_id": job_id, "raw": b64(bytes(body)), "at": now_iso(),
               "facts": facts_of(doc, digest(doc))}
        answer = self._call(cmd, "submit")
        return SubmitReceipt(job_id, answer["outcome"], answer["status"],
                             location=f"{self.topics.state} entry-{answer['entry']}")

    # -- delivery ------------------------------------------------------------------------
    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        """Ask for up to max_count entries when this replica sees some waiting for this worker;
        else wait (up to timeout) for the replica to see one."""
        if max_count <= 0 or self._closed:
            return []
        statelog, end = self._state_log(), time.monotonic() + timeout
        while not self._closed:
            if self._waiting_for_me(statelog):
                handed = self._call({"op": "take", "w": self.worker_id, "life": self._life, "n": max_count,
                                     "lease": self.lease_seconds, "at": now_iso()}, "fetch")
                if handed:
                    return [self._delivery(h) for h in handed]
            left = end - time.monotonic()
            if left <= 0:
                return []
            with statelog.cond:
                statelog.cond.wait(min(left, 0.5))
        return []

    def _waiting_for_me(self, statelog: StateLog) -> bool:
        with statelog.cond:
            s = statelog.state
            return any(e.skip.get(self.worker_id, s.clock) <= s.clock for e in s.waiting.values())

    def _delivery(self, handed: dict) -> KafkaDelivery:
        d = KafkaDelivery(handed, handed["raw"], handed["size"])
        self._held.add(d.generation)
        return d

    def read(self, delivery: Delivery) -> bytes:
        size = max(delivery.size, len(delivery.raw))
        if size > self.max_job_bytes:
            raise JobFileError("record", f"the job document is {size} bytes, larger than the limit of "
                                         f"{self.max_job_bytes} bytes (--max-job-size)")
        return delivery.raw

    def _lose(self, d: Delivery) -> LeaseLost:
        """d belongs to another worker now: reported once, and the error for its caller."""
        self._held.discard(d.generation)
        if not d.lost:
            self.observer.lease_lost()
        d.lost = True
        return LeaseLost(f"{d.name} (job {d.job_id}) now belongs to another worker")

    def _fenced(self, d: Delivery, op: str, **fields: Any) -> bool:
        """Send a command about d's claim; False (d marked lost) when d is not its hand-out."""
        if d.lost or d.generation not in self._held:
            self._lose(d)
            return False
        if self._call(dict(fields, op=op, entry=d.entry, generation=d.generation, w=self.worker_id), op):
            return True
        self._lose(d)
        return False

    def mark_started(self, delivery: Delivery) -> None:
        """No round trip for a delivery fetch marked started (all of them but a reclaimed one
        whose handler had not begun); the next renewal finds it lost if it was taken over."""
        if delivery.started:
            return
        delivery.started = True
        if self._fenced(delivery, "start", attempt=delivery.attempt, at=now_iso()):
            delivery.renewed = time.monotonic()

    def extend_lease(self, delivery: Delivery) -> bool:
        """Renew while this worker still owns the delivery.  While the broker cannot be reached
        the lease counts as held until lease_seconds have passed since the last renewal."""
        if delivery.lost:
            return False
        try:
            kept = self._fenced(delivery, "renew")
        except OSError:
            return time.monotonic() - delivery.renewed < self.lease_seconds
        if kept:
            delivery.renewed = time.monotonic()
        return kept

    # -- giving back ---------------------------------------------------------------------
    def retry(self, delivery: Delivery, doc: Mapping[str, Any]) -> None:
        raw = compact_job_bytes(doc)
        if not self._fenced(delivery, "retry", raw=b64(raw), attempt=job_facts(doc).attempt):
            raise LeaseLost(f"{delivery.name} (job {delivery.job_id}) now belongs to another worker")
        self._held.discard(delivery.generation)

    def release(self, delivery: Delivery, *, not_for_me: bool = False, other_pool: bool = False) -> None:
        """Queue the entry again unchanged, at the back (not handed to this worker again for a
        while when not_for_me or other_pool).  A delivery another worker owns is left alone."""
        skip = FOREIGN_RECHECK_SECONDS if (not_for_me or other_pool) else 0
        if self._fenced(delivery, "release", skip=skip):
            self._held.discard(delivery.generation)

    # -- depth ---------------------------------------------------------------------------
    def depth(self) -> int:
        """Entries waiting in the state, plus the jobs topic's records no worker took in yet
        (the group's lag)."""
        statelog = self._synced("depth")
        now = statelog.now()
        with statelog.cond:
            waiting = len(statelog.state.waiting)
            oldest = next(iter(statelog.state.waiting.values()), None)
        self.observer.set_queue_oldest_age(max(0.0, now - oldest.since) if oldest is not None else 0.0)
        try:
            return waiting + self._admin.lag()
        except OSError:
            self.observer.transport_error("depth")
            raise

    def workers(self) -> list:
        """The pool's workers as its state knows them: each live one (its life signed within its
        lease) and each gone one still holding deliveries, with the jobs it runs."""
        statelog = self._synced("workers")
        now = statelog.now()
        with statelog.cond:
            s = statelog.state
            found = {w: WorkerInfo(w, self.topics.pool, now - life.beat <= life.lease,
                                   last_seen=_iso(life.beat)) for w, life in s.lives.items()}
            for claim in s.claims.values():
                info = found.setdefault(claim.owner, WorkerInfo(claim.owner, self.topics.pool, False))
                info.held += 1
                if claim.started and claim.entry.job_id is not None:
                    info.running.append(claim.entry.job_id)
        return sorted(found.values(), key=lambda w: w.worker_id)

    def cancel_requests(self, job_ids) -> set:
        statelog = self._log
        if statelog is None:
            return set()
        with statelog.cond:
            jobs = statelog.state.jobs
            return {j for j in job_ids if j in jobs and jobs[j].cancel}
