"""The in-memory transport's worker side: opening, delivery, leases, retry, release (the
:class:`~..base.JobQueue` half; taking over is :mod:`.reclaim`; results, job state and commit
are :mod:`.store`).

A delivery is a claim on an entry, held while its lease (``lease_seconds`` of the broker's
clock, renewed by ``extend_lease``) runs and its worker is alive (open, not declared dead).
Every step that changes a claim first checks that the delivery is still the claim's current
hand-out, so a worker that lost its claim can neither renew, store, retry nor release it.
"""

from __future__ import annotations

import logging
import time
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
    SubmitReceipt,
    Transport,
    TransportObserver,
    compact_job_bytes,
    job_bytes,
)
from ..common import digest, follow_requeue, peek
from .broker import Claim, Entry, Job, MemoryBroker
from .dead import DeadMixin
from .reclaim import ReclaimMixin
from .store import StoreMixin

log = logging.getLogger(__name__)

#: How long a job released as meant for another worker is not handed to this one again.
FOREIGN_RECHECK_SECONDS = 60.0


class MemoryDelivery(Delivery):
    """One hand-out of an entry to this worker (``name`` is the entry's)."""

    __slots__ = ("entry", "raw", "generation", "renewed", "lost")

    def __init__(self, entry: Entry, generation: int, renewed: float, *, started: bool = False) -> None:
        super().__init__(entry.name, started=started, delivery_count=entry.deliveries)
        self.entry, self.raw, self.generation = entry.id, entry.raw, generation
        self.job_id = entry.job_id
        self.renewed = renewed  # broker time of the last renewal
        self.lost = False       # another worker owns the entry now


class MemoryTransport(ReclaimMixin, StoreMixin, DeadMixin, Transport):
    """Jobs and results in this process only, as worker ``worker_id`` of ``broker``'s queue.

    For tests and for embedding the worker in a program: nothing persists beyond the process
    and no other process can reach it, so it is not one of the transports ``--transport``
    offers.  Several transports made with one :class:`~.broker.MemoryBroker` are workers
    sharing one queue and one store, as with a jobs directory or a Redis pool.  Without a
    broker, one of its own is made (with ``clock``; a shared broker has its own clock).

    lease_seconds: a delivery not renewed this long (broker clock) may be taken over;
    max_deliveries: an entry taken over more often is a dead letter; result_ttl: maintain()
    forgets a finished job and its result this long after it ended; max_job_bytes: read()
    refuses a larger document; observer: told of takeovers, lost deliveries and dead letters."""

    protected_paths = ()
    local_dirs: Mapping[str, str] = {}
    fetch_from_job_threads = True  # a look under a lock in this process

    def __init__(self, worker_id: str = "memory", *, broker: MemoryBroker | None = None,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, max_deliveries: int = DEFAULT_MAX_DELIVERIES,
                 result_ttl: float = DEFAULT_RESULT_TTL, max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
                 clock: Any = None,
                 observer: TransportObserver | None = None) -> None:
        if broker is not None and clock is not None:
            raise ValueError("clock: give it to the MemoryBroker (its transports share one clock), "
                             "not to the transport")
        if lease_seconds <= 0 or max_deliveries < 1 or result_ttl <= 0:
            raise ValueError("lease_seconds and result_ttl must be positive and max_deliveries at least 1")
        self.broker = broker if broker is not None else MemoryBroker(**({"clock": clock} if clock else {}))
        self.worker_id = worker_id
        self.lease_seconds = float(lease_seconds)
        self.max_deliveries = int(max_deliveries)
        self.result_ttl = float(result_ttl)
        self.max_job_bytes = int(max_job_bytes)
        self.observer = observer if observer is not None else TransportObserver()
        self._token: object | None = None  # this transport's life in broker.alive (set by open)
        self._held: set = set()              # generations of the deliveries it holds
        self._closed = True                  # not open (yet, or any more): it delivers nothing

    # -- life ---------------------------------------------------------------------------
    def describe(self) -> str:
        return f"memory broker {self.broker.name} (in this process only), worker {self.worker_id}"

    def open(self) -> None:
        """Join the broker as a live worker; ConfigError when a live worker has this id."""
        b = self.broker
        with b.cond:
            b.check()
            holder = b.alive.get(self.worker_id)
            if holder is not None and holder is not self._token:
                raise ConfigError(f"worker id {self.worker_id} is in use by a live worker of memory broker "
                                  f"{b.name}; give every worker its own worker_id")
            if self._closed:  # a new life: what an earlier one held is reclaimed like a dead worker's
                self._token, self._held, self._closed = object(), set(), False
            b.alive[self.worker_id] = self._token

    def close(self) -> None:
        """Leave the broker (idempotent): held deliveries stay, for other workers to reclaim at
        once (this worker is not alive any more), as do the store and the queue."""
        b = self.broker
        with b.cond:
            self._closed = True
            if self._token is not None and b.alive.get(self.worker_id) is self._token:
                del b.alive[self.worker_id]
            b.cond.notify_all()

    def health(self) -> dict:
        reason = self.broker.outage
        if reason is not None:
            return {"transport": (False, f"memory broker {self.broker.name} unavailable: {reason}")}
        return {"transport": (True, f"memory broker {self.broker.name} reachable")}

    # -- submission ---------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        job_id = doc["job_id"]
        body = job_bytes(doc, raw, self.max_job_bytes)  # JobTooLarge: never queued unreadable
        b = self.broker
        with b.cond:
            b.check()
            job = b.jobs.get(job_id)
            if job is not None and not job.unrun:
                outcome = "exists" if job.digest == digest(doc) else "conflict"
                return SubmitReceipt(job_id, outcome, job.status, location=f"entry-{job.entry}")
            entry = b.add_entry(bytes(body), job_id)
            self._new_job(job_id, entry, doc)
        return SubmitReceipt(job_id, "created", "pending", location=entry.name)

    def _new_job(self, job_id: str, entry: Entry, doc: Any) -> Job:
        facts = job_facts(doc)
        job = Job(job_id, self.broker.number(), entry.id, digest(doc) if isinstance(doc, dict) else "",
                  facts.operation, facts.cancellable, facts.attempt, now_iso())
        self.broker.jobs[job_id] = job
        return job

    # -- delivery -----------------------------------------------------------------------
    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        if max_count <= 0 or self._closed:
            return []
        end = time.monotonic() + timeout
        b = self.broker
        with b.cond:
            while True:
                b.check()
                out = self._take(max_count)
                left = end - time.monotonic()
                if out or left <= 0 or self._closed:
                    return out
                b.cond.wait(left)

    def _take(self, max_count: int) -> list:
        """Up to max_count waiting entries, oldest first, each admitted as its job id's one
        entry (a second entry of a known id is a dead letter, never delivered)."""
        b, now, out = self.broker, self.broker.clock(), []
        for entry in list(b.waiting.values()):
            if len(out) == max_count:
                break
            if entry.skip.get(self.worker_id, now) > now:
                continue
            if not self._admit(entry):
                continue
            del b.waiting[entry.id]
            out.append(self._hand_out(entry, started=False))
        return out

    def _admit(self, entry: Entry) -> bool:
        b = self.broker
        if not entry.peeked:
            entry.peeked = True
            entry.job_id, doc = peek(entry.raw, self.max_job_bytes)
            if entry.job_id is not None and entry.job_id not in b.jobs:
                self._new_job(entry.job_id, entry, doc)
        job = b.jobs.get(entry.job_id) if entry.job_id is not None else None
        if job is not None and job.entry != entry.id and job.unrun:  # its only entry never ran
            job = self._new_job(entry.job_id, entry, peek(entry.raw, self.max_job_bytes)[1])
        if job is not None and job.entry != entry.id:
            log.warning("%s: job %s already exists as entry-%d; moved to the dead letters", entry.name,
                        entry.job_id, job.entry)
            detail = f"job {entry.job_id} is already known as entry-{job.entry}"
            b.dead_letter(entry, "duplicate_job_id", detail, self.worker_id)
            self.observer.dead_lettered("duplicate_job_id")
            return False
        return True

    def _hand_out(self, entry: Entry, *, started: bool) -> MemoryDelivery:
        b = self.broker
        now = b.clock()
        entry.deliveries += 1
        claim = Claim(entry, self.worker_id, self._token, b.number(), now + self.lease_seconds, started)
        b.claims[entry.id] = claim
        self._held.add(claim.generation)
        d = MemoryDelivery(entry, claim.generation, now, started=started)
        job = b.jobs.get(entry.job_id) if entry.job_id is not None else None
        d.no_result_yet = job is not None and job.entry == entry.id and entry.job_id not in b.results
        return d

    def _claim_of(self, d: Delivery) -> Claim | None:
        """d's claim while d is its current hand-out and held here (cond held), else None."""
        claim = self.broker.claims.get(getattr(d, "entry", None))
        if claim is None or claim.generation != d.generation or d.generation not in self._held:
            return None
        return claim

    def _lose(self, d: Delivery) -> LeaseLost:
        """d belongs to another worker now: reported once, and the error for its caller."""
        self._held.discard(d.generation)
        if not d.lost:
            self.observer.lease_lost()
        d.lost = True
        return LeaseLost(f"{d.name} (job {d.job_id}) now belongs to another worker")

    def read(self, delivery: Delivery) -> bytes:
        size = len(delivery.raw)
        if size > self.max_job_bytes:
            raise JobFileError("file", f"the job document is {size} bytes, larger than the limit of "
                                       f"{self.max_job_bytes} bytes (max_job_bytes)")
        return delivery.raw

    def mark_started(self, delivery: Delivery) -> None:
        """Record the start (and renew the lease).  A delivery another worker owns by now is
        marked lost instead: the next extend_lease answers False and every store is fenced."""
        b = self.broker
        with b.cond:
            b.check()
            delivery.started = True
            claim = self._claim_of(delivery)
            if claim is None:
                self._lose(delivery)
                return
            claim.started, claim.expires = True, b.clock() + self.lease_seconds
            delivery.renewed = b.clock()
            job = b.jobs.get(claim.entry.job_id or "")
            if job is not None and job.entry == claim.entry.id:
                job.status, job.worker_id, job.started_at = "running", self.worker_id, now_iso()
                job.attempt = delivery.attempt or job.attempt

    def extend_lease(self, delivery: Delivery) -> bool:
        """Renew while this worker still owns the delivery.  While the broker is unavailable the
        lease counts as held until lease_seconds have passed since the last renewal."""
        if delivery.lost:
            return False
        b = self.broker
        with b.cond:
            now = b.clock()
            if b.outage is not None:
                return now - delivery.renewed < self.lease_seconds
            claim = self._claim_of(delivery)
            if claim is None:
                self._lose(delivery)
                return False
            claim.expires, delivery.renewed = now + self.lease_seconds, now
            return True

    # -- giving back --------------------------------------------------------------------
    def retry(self, delivery: Delivery, doc: Mapping[str, Any]) -> None:
        raw = compact_job_bytes(doc)
        attempt = job_facts(doc).attempt
        with self.broker.cond:
            self.broker.check()
            if self._claim_of(delivery) is None:
                raise self._lose(delivery)
            self._requeue(delivery, raw, attempt=attempt)

    def release(self, delivery: Delivery, *, not_for_me: bool = False, other_pool: bool = False) -> None:
        """Queue the entry again unchanged, at the back (not handed to this worker again for a
        while when not_for_me or other_pool: a broker has no pools, any worker may take it).
        A delivery another worker owns by now is left alone."""
        b = self.broker
        with b.cond:
            b.check()
            if self._claim_of(delivery) is None:
                self._lose(delivery)
                return
            entry = self._requeue(delivery, delivery.raw)
            if not_for_me or other_pool:
                entry.skip[self.worker_id] = b.clock() + FOREIGN_RECHECK_SECONDS

    def _requeue(self, delivery: Delivery, raw: bytes, *, attempt: int | None = None) -> Entry:
        """Drop delivery's claim and queue raw as a new entry at the back; the job's state
        follows when it named the old entry (cond held, the claim checked)."""
        b = self.broker
        old = b.claims.pop(delivery.entry).entry
        self._held.discard(delivery.generation)
        entry = b.add_entry(raw, old.job_id)
        follow_requeue(b.jobs, old, entry.id, attempt)
        return entry

    # -- depth and cancel requests ------------------------------------------------------
    def depth(self) -> int:
        with self.broker.cond:
            self.broker.check()
            return len(self.broker.waiting)

    def cancel_requests(self, job_ids) -> set:
        b = self.broker
        with b.cond:
            if b.outage is not None:
                return set()
            return {j for j in job_ids if j in b.jobs and b.jobs[j].cancel}
