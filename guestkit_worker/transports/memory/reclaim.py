"""Taking over the deliveries of dead workers and of lapsed leases in the in-memory transport
(the ``reclaim`` of :class:`~..base.JobQueue`); an entry delivered more than
``max_deliveries`` times goes to the dead letters instead."""

from __future__ import annotations

import logging

from ...job.timestamps import stamp as now_iso
from ..base import Delivery, ReclaimDecision, UnrecoverableReason
from ..common import ReclaimDisposal
from .broker import Entry

log = logging.getLogger(__name__)


class ReclaimMixin(ReclaimDisposal):
    """reclaim and the dead letters of :class:`~.transport.MemoryTransport`, which provides the
    broker, the hand-out and the claim checks."""

    _reclaim_log = log

    def reclaim(self, decide: ReclaimDecision, limit: int, *,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        """Take over up to limit deliveries whose worker is dead (closed, declared dead, or an
        earlier life of this worker id) or whose lease ran out, and hand each to decide; one
        whose decision raised is a dead letter, its job failed with the error of the reason
        ``unrecoverable`` builds (DEAD_LETTERED without one)."""
        if limit <= 0 or self._closed:
            return 0
        with self.broker.cond:
            self.broker.check()
            taken = self._take_over(limit)
        for d, previous in taken:
            self._dispose(d, previous, decide, unrecoverable)
        return len(taken)

    def _take_over(self, limit: int) -> list:
        b, now, taken = self.broker, self.broker.clock(), []
        for claim in list(b.claims.values()):
            if len(taken) == limit:
                break
            if claim.generation in self._held:
                continue
            if b.owner_alive(claim.owner, claim.token) and claim.expires > now:
                continue
            previous, times = claim.owner, claim.entry.deliveries + 1
            if times > self.max_deliveries:
                log.warning("%s: delivered %d times (max_deliveries %d); moved to the dead letters",
                            claim.entry.name, times, self.max_deliveries)
                detail = f"delivered {times} times; last owner {previous}"
                self._fail_dead(claim.entry, "max_deliveries", detail, unrun=not claim.started)
                continue
            del b.claims[claim.entry.id]
            taken.append((self._hand_out(claim.entry, started=claim.started), previous))
        return taken

    def _let_go(self, d: Delivery) -> None:
        """Stop holding d without giving it back: the next reclaim (anyone's) takes it over."""
        with self.broker.cond:
            claim = self._claim_of(d)
            if claim is not None:
                claim.expires = float("-inf")
            self._held.discard(d.generation)

    def _dead_letter(self, d: Delivery, reason: str, detail: str, error: dict | None = None) -> None:
        with self.broker.cond:
            claim = self._claim_of(d)
            if claim is not None:
                self._held.discard(d.generation)
                self._fail_dead(claim.entry, reason, detail, error)

    def _fail_dead(self, entry: Entry, reason: str, detail: str, error: dict | None = None, *,
                   unrun: bool = False) -> None:
        """Dead-letter entry; the job it is ends failed with ``error`` as given, else the
        transport's own record of the disposal, DEAD_LETTERED (cond held).  unrun: its handler
        never started, so its job id is free for a new submission."""
        b = self.broker
        b.dead_letter(entry, reason, detail, self.worker_id)
        self.observer.dead_lettered(reason)
        job = b.jobs.get(entry.job_id or "")
        if job is not None and job.entry == entry.id:
            job.status, job.completed_at, job.ended = "failed", now_iso(), b.clock()
            own = {"code": "DEAD_LETTERED", "message": f"{reason}: {detail}"}
            job.error = error if error is not None else own
            job.unrun = unrun
        b.cond.notify_all()
