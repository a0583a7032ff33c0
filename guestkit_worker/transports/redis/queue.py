"""Delivery of jobs from the pool's stream: submit, fetch, leases, retry, release, dead
letters and the queue depth (the :class:`~..base.JobQueue` half of the transport; taking
over the entries of dead workers is :mod:`.reclaim`)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ...job.errors import JobFileError
from ...job.facts import job_facts
from ...job.protocol import decode_job_bytes, peek_job_id
from ..base import Delivery, LeaseLost, SubmitReceipt, TransportUnavailable, compact_job_bytes, job_bytes
from .connection import MAX_BLOCK_SECONDS
from .keys import GROUP
from .scripts import DEAD_MAXLEN

log = logging.getLogger(__name__)


class RedisDelivery(Delivery):
    """One stream entry delivered to this worker (``name`` is the entry id)."""

    __slots__ = ("raw", "doc", "renewed", "poison", "lost", "start_recorded")

    def __init__(self, entry: str, raw: bytes, doc: dict, *, started: bool = False,
                 delivery_count: int = 1, poison: tuple | None = None) -> None:
        super().__init__(entry, started=started, delivery_count=delivery_count)
        self.raw, self.doc = raw, doc
        self.poison = poison  # (reason, detail) when the entry cannot be a job
        self.lost = False     # another worker owns the entry now
        self.start_recorded = False  # the step that delivered it marked it started in Redis
        self.job_id = peek_job_id(doc)
        self.attempt = job_facts(doc).attempt
        self.renewed = time.monotonic()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def digest(doc: Mapping[str, Any]) -> str:
    """What makes two submissions of one job id 'the same document'."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def hash_facts(doc: Mapping[str, Any]) -> tuple:
    """(operation, cancellable '1'|'0', attempt) of a job document (read by the job layer's
    job_facts), as its job hash keeps them."""
    facts = job_facts(doc)
    return facts.operation or "", "1" if facts.cancellable else "0", str(facts.attempt)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class QueueMixin:
    """The JobQueue methods; state and clients come from :class:`.transport.RedisTransport`."""

    # -- submission ---------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        job_id = doc["job_id"]
        body = job_bytes(doc, raw, self.max_job_bytes)  # never larger than what workers read
        op, cancellable, attempt = hash_facts(doc)
        k = self.k
        with self._guard("submit"):
            outcome, status, entry = self.hot.evalsha(
                self.s.submit, [k.jobs, k.job(job_id), k.index],
                [body, job_id, digest(doc), op, cancellable, attempt, now_iso()])
        return SubmitReceipt(job_id, _text(outcome), _text(status), location=f"{k.jobs} {_text(entry)}")

    # -- delivery -----------------------------------------------------------------------
    #: fetch() records the start of what it delivers (the take script; see JobQueue)
    starts_on_fetch = True

    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        """One round trip while jobs wait: the take script reads, admits and starts up to
        max_count entries.  When it finds none, a blocking ``XREADGROUP`` waits for the first
        (a script cannot block), and what it brings is admitted and started by the admit
        script, a second round trip only when the queue was empty."""
        if max_count <= 0 or self._closing.is_set():
            return []  # closed: its clients would connect again and deliver to a worker that is gone
        self._ensure_group()
        self._alive()
        if self.identity_lost:  # another process has this worker id: nothing more is taken
            self._closing.wait(max(0.0, min(timeout, MAX_BLOCK_SECONDS)))
            return []
        k = self.k
        with self._guard("fetch"):
            rows = self.s.take(keys=[k.jobs, k.running], args=[GROUP, self.worker_id, max_count, now_iso(), k.prefix])
        if rows:
            return self._taken(rows)
        block = int(max(0.0, min(timeout, MAX_BLOCK_SECONDS)) * 1000)
        if not block:
            return []
        with self._guard("fetch"):
            reply = self.rb.xreadgroup(GROUP, self.worker_id, {k.jobs: ">"}, count=max_count, block=block)
        entries = [(_text(eid), fields) for _, batch in (reply or []) for eid, fields in batch]
        return self._admit(entries, [1] * len(entries), [""] * len(entries), start=True)

    def _taken(self, rows: list) -> list:
        """Deliveries of the take script's rows; its 'new' rows go through the admit script."""
        out, new = [], []
        for entry, fields, verdict in rows:
            entry, verdict, fields = _text(entry), _text(verdict), _fields(fields)
            if verdict == "new":
                new.append((entry, fields))
                continue
            raw = fields.get(b"job")
            doc, problem = self._decode(raw)
            if problem:  # admitted by the script, yet this worker cannot read it: rejected and dead-lettered
                d = RedisDelivery(entry, raw or b"", {}, poison=problem)
            else:
                d = RedisDelivery(entry, raw, doc)
                d.no_result_yet = verdict == "started"
            d.started = d.start_recorded = verdict == "started"
            with self._lock:
                self._held[entry] = d
            out.append(d)
        if new:
            out += self._admit(new, [1] * len(new), [""] * len(new), start=True)
        return out

    def _admit(self, entries: list, counts: list, started_by: list, *, poison_to_worker: bool = True,
               start: bool = False) -> list:
        """Turn delivered entries into deliveries.  A job is registered in its job hash (an
        entry XADDed by another producer has none yet); an entry whose job id another entry
        already holds is a duplicate and goes to the dead letters here.  An entry that cannot
        be a job (poison) is handed to the worker, which rejects it, and commit() moves it to
        the dead letters with the reason (or, poison_to_worker False, moved there right away)."""
        k, out, calls = self.k, [], []
        with self._guard("fetch"):
            for (entry, fields), count, starter in zip(entries, counts, started_by):
                raw = (fields or {}).get(b"job")
                doc, problem = self._decode(raw)
                if problem:
                    d = RedisDelivery(entry, raw or b"", {}, delivery_count=count, poison=problem)
                    if poison_to_worker:
                        with self._lock:
                            self._held[entry] = d
                        out.append(d)
                    else:
                        calls.append((problem[0], d, "dead", [k.jobs, k.dead, k.running],
                                      [GROUP, self.worker_id, entry, problem[0], problem[1], DEAD_MAXLEN,
                                       self.result_ttl, ""]))
                    continue
                d = RedisDelivery(entry, raw, doc, started=bool(starter), delivery_count=count)
                op, cancellable, attempt = hash_facts(doc)
                now = now_iso()
                calls.append((None, d, "admit", [k.jobs, k.dead, k.running, k.job(d.job_id), k.index,
                                                 k.result(d.job_id)],
                              [GROUP, self.worker_id, entry, d.job_id, digest(doc), op, cancellable, attempt,
                               now, DEAD_MAXLEN] + ([now] if start else [])))
            replies = self.s.batch([c[2:] for c in calls]) if calls else []
        for (reason, d, *_), reply in zip(calls, replies):
            if isinstance(reply, Exception):
                log.error("stream entry %s: admitting it failed (%s); it stays pending for reclaim", d.name, reply)
                self.metrics.transport_error("fetch")
                continue
            if reason is not None:
                if reply:
                    log.warning("stream entry %s: moved to the dead letters: %s", d.name, reason)
                    self._dead_lettered(reason)
                continue
            answer = _text(reply)
            if answer in ("ok", "started", "stored"):
                d.no_result_yet = answer != "stored"
                if answer == "started":
                    d.started = d.start_recorded = True
                with self._lock:
                    self._held[d.name] = d
                out.append(d)
            elif answer == "duplicate":
                log.warning("stream entry %s: job %s already exists; moved to the dead letters", d.name, d.job_id)
                self._dead_lettered("duplicate_job_id")
            else:
                self._lease_lost(d)
        return out

    def _decode(self, raw: bytes | None) -> tuple:
        """(document, None), or (None, (reason, detail)) when an entry cannot be a job."""
        if raw is None:
            return None, ("no_job_field", "the entry has no field 'job'")
        if len(raw) > self.max_job_bytes:
            return None, ("too_large", f"{len(raw)} bytes, larger than the limit of {self.max_job_bytes} "
                          "(--max-job-size)")
        try:
            doc = decode_job_bytes(raw, self.max_job_bytes)
        except JobFileError as exc:
            return None, ("not_json", str(exc))
        if peek_job_id(doc) is None:
            return None, ("no_job_id", "the job document has no usable job_id")
        return doc, None

    def read(self, delivery: Delivery) -> bytes:
        """The entry's ``job`` field; JobFileError when it has none or it is over --max-job-size
        (text that is not JSON is returned: the worker's decoder says what is wrong)."""
        if delivery.poison and delivery.poison[0] in ("too_large", "no_job_field"):
            raise JobFileError("file", delivery.poison[1])
        return delivery.raw

    def mark_started(self, delivery: Delivery) -> None:
        """Record in Redis that the handler starts (and renew the lease).  When the entry
        belongs to another worker by now, the delivery is marked lost instead of raising: the
        next extend_lease answers False, so the worker stops the run, and every store is
        fenced anyway."""
        if delivery.start_recorded:  # the take (or admit) script that delivered it did it
            delivery.start_recorded = False
            delivery.started = True
            delivery.renewed = time.monotonic()
            return
        k = self.k
        with self._guard("start"):
            ok = self.s.start(keys=[k.jobs, k.running, k.job(delivery.job_id)],
                              args=[GROUP, self.worker_id, delivery.name, delivery.attempt or 1, now_iso()])
        delivery.started = True
        if not ok:
            self._lease_lost(delivery)
            return
        delivery.renewed = time.monotonic()

    def _alive(self, force: bool = False) -> None:
        """Refresh this worker's liveness key (expires a lease after the last refresh), at most
        every lease/4; idempotency reservations of a worker whose key expired are taken over.
        A key that names another process (which took this worker id while this one was
        paused past its lease) is left to it: identity_lost is set and the worker stops."""
        now = time.monotonic()
        if self.identity_lost or (not force and now - self._alive_at < self.lease_seconds / 4):
            return
        self._alive_at = now
        try:
            with self._guard("renew"):
                reply = self.s.alive(keys=[self.k.alive(self.worker_id)],
                                     args=[self.mark, int(self.lease_seconds * 1000)])
        except Exception as exc:  # counted by the guard; the next call tries again
            self._alive_at = 0.0
            log.debug("refreshing the liveness key failed: %s", exc)
            return
        if reply != 1:
            self._lose_identity(_text(reply))

    def extend_lease(self, delivery: Delivery) -> bool:
        """Renew the claim (reset the entry's idle time) if this worker still owns it.  While
        Redis cannot be reached the lease counts as held: nobody takes an entry over while
        Redis is away, and others wait a lease after it is back (reclaim's grace), time for
        this renewal to come through; a worker cut off from Redis alone learns at its first
        renewal afterwards whether its entry was taken over.  A delivery this worker no
        longer holds (given back, or dropped when giving it back failed) is never renewed:
        its entry must go idle so that reclaim takes it over a lease later."""
        if delivery.lost:
            return False
        with self._lock:
            if delivery.name not in self._held:
                return False
        try:
            with self._guard("renew"):
                ok = self.s.renew(keys=[self.k.jobs], args=[GROUP, self.worker_id, delivery.name])
        except TransportUnavailable:
            return True
        except Exception:  # anything else the client raises
            return time.monotonic() - delivery.renewed < self.lease_seconds
        self._alive()
        if not ok:
            self._lease_lost(delivery)
            return False
        delivery.renewed = time.monotonic()
        return True

    def renew_held(self) -> None:
        """Renew, in one round trip, the entries this worker holds that no running job renews
        (an outcome waiting to be stored, a job taken and not started yet) and that were not
        renewed for a quarter lease: after an outage they stay this worker's until their
        outcome is stored.  A renewal refused changes nothing here (the commit is fenced)."""
        now, quarter = time.monotonic(), self.lease_seconds / 4
        with self._lock:
            stale = [d for d in self._held.values() if not d.lost and now - d.renewed >= quarter]
        if not stale:
            return
        calls = [("renew", [self.k.jobs], [GROUP, self.worker_id, d.name]) for d in stale]
        try:
            with self._guard("renew"):
                replies = self.s.batch(calls)
        except TransportUnavailable:
            return
        for d, reply in zip(stale, replies):
            if reply == 1:
                d.renewed = now

    def retry(self, delivery: Delivery, doc: Mapping[str, Any]) -> None:
        self._requeue(delivery, compact_job_bytes(doc), job_facts(doc).attempt, "retry")

    def release(self, delivery: Delivery, *, not_for_me: bool = False, other_pool: bool = False) -> None:
        """Queue the entry again unchanged (a new entry at the back).  A job the worker found
        routed away from this pool (other_pool), whose stream holds it, can never run here: it
        goes to the dead letters.  Releasing an entry another worker owns by now does nothing."""
        if other_pool:
            self._dead_letter(delivery, "not_for_this_pool",
                              f"routing or constraints exclude pool {self.pool}, whose stream holds it")
            return
        try:
            self._requeue(delivery, delivery.raw, delivery.attempt or 1, "release")
        except LeaseLost:
            pass  # counted and logged; the new owner disposes of it

    def _requeue(self, delivery: Delivery, body: bytes, attempt: int, operation: str) -> None:
        k = self.k
        try:
            with self._guard(operation):
                new = self.s.requeue(keys=[k.jobs, k.running, k.job(delivery.job_id)],
                                     args=[GROUP, self.worker_id, delivery.name, body, attempt])
        finally:  # given back, or left for reclaim (by anyone, this worker included) a lease later
            self._forget(delivery)
        if new == 0:
            self._lease_lost(delivery)
            raise LeaseLost(f"stream entry {delivery.name} (job {delivery.job_id}) now belongs to another worker")

    def _dead_letter(self, delivery: Delivery, reason: str, detail: str, error: dict | None = None) -> bool:
        """Move the entry to the dead letters; its job ends failed with ``error`` as given (a
        reason's error built by the worker), else the transport's own record of the disposal
        (DEAD_LETTERED)."""
        k = self.k
        error = json.dumps(error if error is not None else {"code": "DEAD_LETTERED", "message": f"{reason}: {detail}"})
        keys = [k.jobs, k.dead, k.running] + ([k.job(delivery.job_id)] if delivery.job_id else [])
        with self._guard("dead_letter"):
            ok = self.s.dead(keys=keys, args=[GROUP, self.worker_id, delivery.name, reason, detail, DEAD_MAXLEN,
                                              self.result_ttl, error])
        self._forget(delivery)
        if ok:
            log.warning("stream entry %s (job %s): moved to the dead letters: %s: %s", delivery.name,
                        delivery.job_id, reason, detail)
            self._dead_lettered(reason)
        return bool(ok)

    # -- depth --------------------------------------------------------------------------
    def depth(self) -> int:
        """Entries not yet delivered to the group (see the ``waiting`` script); also sets
        ``guestkit_worker_queue_oldest_waiting_seconds`` from the oldest one's entry id."""
        with self._guard("depth"):
            waiting, age_ms = self.s.waiting(keys=[self.k.jobs], args=[GROUP])
        self.metrics.set_queue_oldest_age(max(0, int(age_ms)) / 1000.0)
        return int(waiting)

    def cancel_requests(self, job_ids) -> set:
        ids = list(job_ids)
        if not ids:
            return set()
        try:
            with self._guard("cancel_requests"):
                pipe = self.r.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hget(self.k.job(job_id), "cancel")
                flags = pipe.execute()
        except Exception:
            return set()
        return {j for j, f in zip(ids, flags) if f}

    # -- bookkeeping --------------------------------------------------------------------
    def _forget(self, delivery: Delivery) -> None:
        with self._lock:
            self._held.pop(delivery.name, None)

    def _lease_lost(self, delivery: Delivery) -> None:
        self._forget(delivery)
        if isinstance(delivery, RedisDelivery):
            if delivery.lost:
                return  # counted once
            delivery.lost = True
        self.metrics.lease_lost()
        log.warning("stream entry %s (job %s): this worker no longer owns it (lease lost)", delivery.name,
                    delivery.job_id)

    def _dead_lettered(self, reason: str) -> None:
        self.metrics.dead_lettered(reason)


def _fields(fields: Any) -> dict:
    """Entry fields as a dict: a Lua reply gives a flat [k, v, k, v] list."""
    if isinstance(fields, dict):
        return fields
    flat = list(fields or [])
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
