"""Delivery of jobs from the pool's stream (:class:`RedisQueue`): submit, fetch, leases, retry,
release, dead letters and the queue depth (the :class:`~..base.JobQueue` half of the transport;
taking over the entries of dead workers is :mod:`.reclaim`)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...job.decode import decode_job_bytes
from ...job.errors import JobFileError
from ...job.facts import job_facts
from ...job.protocol import peek_job_id
from ...job.timestamps import stamp as now_iso
from ..base import Delivery, LeaseLost, SubmitReceipt, TransportUnavailable, compact_job_bytes, job_bytes
from ..common import digest
from .connection import MAX_BLOCK_SECONDS
from .held import HeldEntries
from .keys import GROUP
from .link import RedisLink, text
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


def hash_facts(doc: Mapping[str, Any]) -> tuple:
    """(operation, cancellable '1'|'0', attempt) of a job document (read by the job layer's
    job_facts), as its job hash keeps them."""
    facts = job_facts(doc)
    return facts.operation or "", "1" if facts.cancellable else "0", str(facts.attempt)


class RedisQueue:
    """The JobQueue methods over ``link``; ``held``: the entries this worker holds;
    max_job_bytes: the largest job document submitted or read."""

    #: fetch() records the start of what it delivers (the take script; see JobQueue)
    starts_on_fetch = True

    def __init__(self, link: RedisLink, held: HeldEntries, *, max_job_bytes: int) -> None:
        self.link, self.held, self.max_job_bytes = link, held, max_job_bytes

    # -- submission ---------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        job_id = doc["job_id"]
        body = job_bytes(doc, raw, self.max_job_bytes)  # never larger than what workers read
        op, cancellable, attempt = hash_facts(doc)
        link, k = self.link, self.link.k
        with link.guard("submit"):
            outcome, status, entry = link.hot.evalsha(
                link.s.submit, [k.jobs, k.job(job_id), k.index],
                [body, job_id, digest(doc), op, cancellable, attempt, now_iso()])
        return SubmitReceipt(job_id, text(outcome), text(status), location=f"{k.jobs} {text(entry)}")

    # -- delivery -----------------------------------------------------------------------
    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        """One round trip while jobs wait: the take script reads, admits and starts up to
        max_count entries.  When it finds none, a blocking ``XREADGROUP`` waits for the first
        (a script cannot block), and what it brings is admitted and started by the admit
        script, a second round trip only when the queue was empty."""
        link = self.link
        if max_count <= 0 or link.closing.is_set():
            return []  # closed: its clients would connect again and deliver to a worker that is gone
        link.ensure_group()
        link.alive()
        if link.identity_lost:  # another process has this worker id: nothing more is taken
            link.closing.wait(max(0.0, min(timeout, MAX_BLOCK_SECONDS)))
            return []
        k, me = link.k, link.worker_id
        with link.guard("fetch"):
            rows = link.s.take(keys=[k.jobs, k.running], args=[GROUP, me, max_count, now_iso(), k.prefix])
        if rows:
            return self._taken(rows)
        block = int(max(0.0, min(timeout, MAX_BLOCK_SECONDS)) * 1000)
        if not block:
            return []
        with link.guard("fetch"):
            reply = link.rb.xreadgroup(GROUP, me, {k.jobs: ">"}, count=max_count, block=block)
        entries = [(text(eid), fields) for _, batch in (reply or []) for eid, fields in batch]
        return self.admit(entries, [1] * len(entries), [""] * len(entries), start=True)

    def _taken(self, rows: list) -> list:
        """Deliveries of the take script's rows; its 'new' rows go through the admit script."""
        out, new = [], []
        for entry, fields, verdict in rows:
            entry, verdict, fields = text(entry), text(verdict), entry_fields(fields)
            if verdict == "new":
                new.append((entry, fields))
                continue
            raw = fields.get(b"job")
            doc, problem = self._decode(raw)
            if problem:  # admitted by the script, yet this worker cannot read it: rejected, dead-lettered
                d = RedisDelivery(entry, raw or b"", {}, poison=problem)
            else:
                d = RedisDelivery(entry, raw, doc)
                d.no_result_yet = verdict == "started"
            d.started = d.start_recorded = verdict == "started"
            self.held.hold(d)
            out.append(d)
        if new:
            out += self.admit(new, [1] * len(new), [""] * len(new), start=True)
        return out

    def admit(self, entries: list, counts: list, started_by: list, *, poison_to_worker: bool = True,
              start: bool = False) -> list:
        """Turn delivered entries into deliveries.  A job is registered in its job hash (an
        entry XADDed by another producer has none yet); an entry whose job id another entry
        already holds is a duplicate and goes to the dead letters here.  An entry that cannot
        be a job (poison) is handed to the worker, which rejects it, and commit() moves it to
        the dead letters with the reason (or, poison_to_worker False, moved there right away).

        Args:
            entries: (entry id, fields) of each delivered entry.
            counts: how often each was delivered.
            started_by: the worker that had started each ('' for none).
            poison_to_worker: hand poison to the worker (else dead-letter it at once).
            start: mark the admitted entries started (the fetch's own start).

        Returns:
            The deliveries now held.
        """
        link, out = self.link, []
        with link.guard("fetch"):
            calls = [self._admit_call(entry, fields, count, starter, start, poison_to_worker, out)
                     for (entry, fields), count, starter in zip(entries, counts, started_by)]
            calls = [c for c in calls if c is not None]
            replies = link.s.batch([c[2:] for c in calls]) if calls else []
        for (reason, d, *_), reply in zip(calls, replies):
            self._admitted(reason, d, reply, out)
        return out

    def _admit_call(self, entry: str, fields: Any, count: int, starter: str, start: bool,
                    poison_to_worker: bool, out: list) -> tuple | None:
        """The script call that admits one entry (None: poison handed to the worker as is)."""
        link, k = self.link, self.link.k
        raw = (fields or {}).get(b"job")
        doc, problem = self._decode(raw)
        if problem:
            d = RedisDelivery(entry, raw or b"", {}, delivery_count=count, poison=problem)
            if poison_to_worker:
                self.held.hold(d)
                out.append(d)
                return None
            return (problem[0], d, "dead", [k.jobs, k.dead, k.running],
                    [GROUP, link.worker_id, entry, problem[0], problem[1], DEAD_MAXLEN, link.result_ttl, ""])
        d = RedisDelivery(entry, raw, doc, started=bool(starter), delivery_count=count)
        op, cancellable, attempt = hash_facts(doc)
        now = now_iso()
        return (None, d, "admit", [k.jobs, k.dead, k.running, k.job(d.job_id), k.index, k.result(d.job_id)],
                [GROUP, link.worker_id, entry, d.job_id, digest(doc), op, cancellable, attempt, now,
                 DEAD_MAXLEN] + ([now] if start else []))

    def _admitted(self, reason: str | None, d: RedisDelivery, reply: Any, out: list) -> None:
        """Act on the admit (or dead) script's reply for one entry."""
        if isinstance(reply, Exception):
            log.error("stream entry %s: admitting it failed (%s); it stays pending for reclaim", d.name,
                      reply)
            self.link.observer.transport_error("fetch")
            return
        if reason is not None:
            if reply:
                log.warning("stream entry %s: moved to the dead letters: %s", d.name, reason)
                self.held.dead_lettered(reason)
            return
        answer = text(reply)
        if answer in ("ok", "started", "stored"):
            d.no_result_yet = answer != "stored"
            if answer == "started":
                d.started = d.start_recorded = True
            self.held.hold(d)
            out.append(d)
        elif answer == "duplicate":
            log.warning("stream entry %s: job %s already exists; moved to the dead letters", d.name, d.job_id)
            self.held.dead_lettered("duplicate_job_id")
        else:
            self.held.lease_lost(d)

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
        link, k = self.link, self.link.k
        with link.guard("start"):
            ok = link.s.start(keys=[k.jobs, k.running, k.job(delivery.job_id)],
                              args=[GROUP, link.worker_id, delivery.name, delivery.attempt or 1, now_iso()])
        delivery.started = True
        if not ok:
            self.held.lease_lost(delivery)
            return
        delivery.renewed = time.monotonic()

    def extend_lease(self, delivery: Delivery) -> bool:
        """Renew the claim (reset the entry's idle time) if this worker still owns it.  While
        Redis cannot be reached the lease counts as held: nobody takes an entry over while
        Redis is away, and others wait a lease after it is back (reclaim's grace), time for
        this renewal to come through; a worker cut off from Redis alone learns at its first
        renewal afterwards whether its entry was taken over.  A delivery this worker no
        longer holds (given back, or dropped when giving it back failed) is never renewed:
        its entry must go idle so that reclaim takes it over a lease later."""
        if delivery.lost or not self.held.holds(delivery.name):
            return False
        link = self.link
        try:
            with link.guard("renew"):
                ok = link.s.renew(keys=[link.k.jobs], args=[GROUP, link.worker_id, delivery.name])
        except TransportUnavailable:
            return True
        except Exception:  # anything else the client raises
            return time.monotonic() - delivery.renewed < link.lease_seconds
        link.alive()
        if not ok:
            self.held.lease_lost(delivery)
            return False
        delivery.renewed = time.monotonic()
        return True

    def renew_held(self) -> None:
        """Renew, in one round trip, the entries this worker holds that no running job renews
        (an outcome waiting to be stored, a job taken and not started yet) and that were not
        renewed for a quarter lease: after an outage they stay this worker's until their
        outcome is stored.  A renewal refused changes nothing here (the commit is fenced)."""
        link = self.link
        now = time.monotonic()
        stale = self.held.stale(now, link.lease_seconds / 4)
        if not stale:
            return
        calls = [("renew", [link.k.jobs], [GROUP, link.worker_id, d.name]) for d in stale]
        try:
            with link.guard("renew"):
                replies = link.s.batch(calls)
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
            self.dead_letter(delivery, "not_for_this_pool",
                             f"routing or constraints exclude pool {self.link.pool}, whose stream holds it",
                             unrun=True)
            return
        with contextlib.suppress(LeaseLost):  # counted and logged; the new owner disposes of it
            self._requeue(delivery, delivery.raw, delivery.attempt or 1, "release")

    def _requeue(self, delivery: Delivery, body: bytes, attempt: int, operation: str) -> None:
        link, k = self.link, self.link.k
        try:
            with link.guard(operation):
                new = link.s.requeue(keys=[k.jobs, k.running, k.job(delivery.job_id)],
                                     args=[GROUP, link.worker_id, delivery.name, body, attempt])
        finally:  # given back, or left for reclaim (by anyone, this worker included) a lease later
            self.held.forget(delivery)
        if new == 0:
            self.held.lease_lost(delivery)
            raise LeaseLost(f"stream entry {delivery.name} (job {delivery.job_id}) now belongs to another "
                            "worker")

    def dead_letter(self, delivery: Delivery, reason: str, detail: str, error: dict | None = None, *,
                    unrun: bool = False) -> bool:
        """Move the entry to the dead letters; its job ends failed with ``error`` as given (a
        reason's error built by the worker), else the transport's own record of the disposal
        (DEAD_LETTERED).  unrun: its handler never started, so its job id is free again for a
        new submission.  False when another worker owns the entry now."""
        link, k = self.link, self.link.k
        error = error if error is not None else {"code": "DEAD_LETTERED", "message": f"{reason}: {detail}"}
        keys = [k.jobs, k.dead, k.running] + ([k.job(delivery.job_id)] if delivery.job_id else [])
        with link.guard("dead_letter"):
            ok = link.s.dead(keys=keys, args=[GROUP, link.worker_id, delivery.name, reason, detail,
                                              DEAD_MAXLEN, link.result_ttl, json.dumps(error),
                                              "1" if unrun else "0"])
        self.held.forget(delivery)
        if ok:
            log.warning("stream entry %s (job %s): moved to the dead letters: %s: %s", delivery.name,
                        delivery.job_id, reason, detail)
            self.held.dead_lettered(reason)
        return bool(ok)

    # -- depth --------------------------------------------------------------------------
    def depth(self) -> int:
        """Entries not yet delivered to the group (see the ``waiting`` script); also reports the
        oldest one's age (from its entry id) to the observer."""
        link = self.link
        with link.guard("depth"):
            waiting, age_ms = link.s.waiting(keys=[link.k.jobs], args=[GROUP])
        link.observer.set_queue_oldest_age(max(0, int(age_ms)) / 1000.0)
        return int(waiting)

    def cancel_requests(self, job_ids: Iterable[str]) -> set:
        ids = list(job_ids)
        if not ids:
            return set()
        link = self.link
        try:
            with link.guard("cancel_requests"):
                pipe = link.r.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hget(link.k.job(job_id), "cancel")
                flags = pipe.execute()
        except Exception:
            return set()
        return {j for j, f in zip(ids, flags) if f}


def entry_fields(fields: Any) -> dict:
    """Entry fields as a dict: a Lua reply gives a flat [k, v, k, v] list."""
    if isinstance(fields, dict):
        return fields
    flat = list(fields or [])
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
