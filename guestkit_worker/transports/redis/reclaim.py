"""Taking over stream entries left pending (:class:`RedisReclaimer`): first this worker's own
from its previous life, then those of other consumers idle longer than the lease (the
``reclaim`` of :class:`~..base.JobQueue`); an entry delivered more than ``--max-deliveries``
times goes to the dead letters instead."""

from __future__ import annotations

import json
import logging
from typing import Any

from ...job.protocol import peek_job_id
from ..base import ReclaimDecision, UnrecoverableReason
from .held import HeldEntries
from .keys import GROUP
from .link import RedisLink, text
from .queue import RedisDelivery, RedisQueue, entry_fields

log = logging.getLogger(__name__)

#: how many idle pending entries one reclaim looks at (it takes at most ``limit`` of them)
RECLAIM_SCAN = 100


class RedisReclaimer:
    """Takes entries over through ``link`` into ``held``, admitting them with ``queue``;
    max_deliveries: an entry delivered more often is a dead letter."""

    def __init__(self, link: RedisLink, held: HeldEntries, queue: RedisQueue, *, max_deliveries: int) -> None:
        self.link, self.held, self.queue, self.max_deliveries = link, held, queue, max_deliveries
        self._own_done = False              # own pending entries of a previous life taken back
        self._own_cursor = "-"

    def reclaim(self, decide: ReclaimDecision, limit: int,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        """First this worker's own entries left pending by its previous life (same worker
        id), then entries of other consumers idle longer than the lease, except for a lease
        after Redis came back from an outage (the grace: after an outage every lease looks
        expired, and live owners renew them and store their outcomes meanwhile)."""
        link = self.link
        if limit <= 0 or link.closing.is_set():
            return 0
        link.ensure_group()
        link.alive()
        if link.identity_lost:  # another process has this worker id: it takes nothing over
            return 0
        k, me, found = link.k, link.worker_id, []
        with link.guard("reclaim"):
            while not self._own_done and len(found) < limit:
                rows = link.s.own(keys=[k.jobs, k.running], args=[GROUP, me, self._own_cursor, limit])
                if not rows:
                    self._own_done = True
                    break
                self._own_cursor = "(" + text(rows[-1][0])
                found += [r for r in rows if r[1] and not self.held.holds(text(r[0]))]
            if len(found) < limit and not link.in_grace():
                held = " ".join(self.held.entries())
                found += link.s.reclaim(keys=[k.jobs, k.running],
                                        args=[GROUP, me, int(link.lease_seconds * 1000),
                                              min(limit - len(found), RECLAIM_SCAN), RECLAIM_SCAN, held])
        return self._hand_over(found, decide, unrecoverable)

    def _hand_over(self, rows: list, decide: ReclaimDecision,
                   unrecoverable: UnrecoverableReason | None) -> int:
        over = [r for r in rows if int(r[2]) > self.max_deliveries]
        for entry, fields, count, owner, starter in over:
            d = RedisDelivery(text(entry), b"", {}, delivery_count=int(count))
            d.job_id = _job_id_of(fields)
            self.queue.dead_letter(d, "max_deliveries", f"delivered {int(count)} times (--max-deliveries "
                                   f"{self.max_deliveries}); last owner {text(owner)}",
                                   unrun=not text(starter))
        rows = [r for r in rows if int(r[2]) <= self.max_deliveries]
        entries = [(text(r[0]), entry_fields(r[1])) for r in rows]
        deliveries = self.queue.admit(entries, [int(r[2]) for r in rows], [text(r[4]) for r in rows],
                                      poison_to_worker=False)
        owners = {text(r[0]): text(r[4]) or text(r[3]) for r in rows}
        for d in deliveries:
            self.link.observer.jobs_reclaimed()
            log.warning("stream entry %s (job %s): taken over from worker %s (delivery %d%s)", d.name,
                        d.job_id, owners[d.name], d.delivery_count,
                        ", its handler had started" if d.started else "")
            try:
                decide(d, owners[d.name])
            except Exception as exc:  # one bad decision must not stop the others
                log.exception("stream entry %s: disposing of the reclaimed job failed", d.name)
                if self.held.holds(d.name):
                    self._dispose(d, owners[d.name], exc, unrecoverable)
        return len(deliveries)

    def _dispose(self, d: RedisDelivery, owner: str, exc: BaseException,
                 unrecoverable: UnrecoverableReason | None) -> None:
        """Dead-letter a delivery whose decision raised, its job failed with the error of the
        reason the worker builds."""
        try:
            reason = unrecoverable(d, owner, exc) if unrecoverable is not None else None
            self.queue.dead_letter(d, "reclaim_failed", f"{type(exc).__name__}: {exc}",
                                   reason.get("error") if isinstance(reason, dict) else None)
        except Exception:
            log.exception("stream entry %s: cannot move it to the dead letters", d.name)


def _job_id_of(fields: Any) -> str | None:
    raw = entry_fields(fields).get(b"job")
    try:
        return peek_job_id(json.loads(raw)) if raw else None
    except ValueError:
        return None
