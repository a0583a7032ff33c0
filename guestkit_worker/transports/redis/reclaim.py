"""Taking over stream entries left pending: first this worker's own from its previous life,
then those of other consumers idle longer than the lease (the ``reclaim`` of
:class:`~..base.JobQueue`); an entry delivered more than ``--max-deliveries`` times goes to
the dead letters instead."""

from __future__ import annotations

import json
import logging
from typing import Any

from ...job.protocol import peek_job_id
from ..base import ReclaimDecision, UnrecoverableReason
from .keys import GROUP
from .queue import RedisDelivery, _fields, _text

log = logging.getLogger(__name__)

#: how many idle pending entries one reclaim looks at (it takes at most ``limit`` of them)
RECLAIM_SCAN = 100


class ReclaimMixin:
    """The reclaim method of the JobQueue; state, clients and the admission of what it takes
    over (``_admit``, ``_dead_letter``) come from :class:`.transport.RedisTransport`."""

    def reclaim(self, decide: ReclaimDecision, limit: int, *,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        """First this worker's own entries left pending by its previous life (same worker
        id), then entries of other consumers idle longer than the lease, except for a lease
        after Redis came back from an outage (the grace: after an outage every lease looks
        expired, and live owners renew them and store their outcomes meanwhile)."""
        if limit <= 0 or self._closing.is_set():
            return 0
        self._ensure_group()
        self._alive()
        if self.identity_lost:  # another process has this worker id: it takes nothing over
            return 0
        k, found = self.k, []
        with self._guard("reclaim"):
            while not self._own_done and len(found) < limit:
                rows = self.s.own(keys=[k.jobs, k.running], args=[GROUP, self.worker_id, self._own_cursor, limit])
                if not rows:
                    self._own_done = True
                    break
                self._own_cursor = "(" + _text(rows[-1][0])
                with self._lock:
                    found += [r for r in rows if r[1] and _text(r[0]) not in self._held]
            if len(found) < limit and not self._in_grace():
                with self._lock:
                    held = " ".join(self._held)
                found += self.s.reclaim(keys=[k.jobs, k.running],
                                        args=[GROUP, self.worker_id, int(self.lease_seconds * 1000),
                                              min(limit - len(found), RECLAIM_SCAN), RECLAIM_SCAN, held])
        return self._hand_over(found, decide, unrecoverable)

    def _hand_over(self, rows: list, decide: ReclaimDecision, unrecoverable: UnrecoverableReason | None) -> int:
        over = [r for r in rows if int(r[2]) > self.max_deliveries]
        for entry, fields, count, owner, _ in over:
            d = RedisDelivery(_text(entry), b"", {}, delivery_count=int(count))
            d.job_id = self._job_id_of(fields)
            self._dead_letter(d, "max_deliveries", f"delivered {int(count)} times (--max-deliveries "
                              f"{self.max_deliveries}); last owner {_text(owner)}")
        rows = [r for r in rows if int(r[2]) <= self.max_deliveries]
        entries = [(_text(r[0]), _fields(r[1])) for r in rows]
        deliveries = self._admit(entries, [int(r[2]) for r in rows], [_text(r[4]) for r in rows],
                                 poison_to_worker=False)
        owners = {_text(r[0]): _text(r[4]) or _text(r[3]) for r in rows}
        n = 0
        for d in deliveries:
            self.metrics.jobs_reclaimed()
            n += 1
            log.warning("stream entry %s (job %s): taken over from worker %s (delivery %d%s)", d.name, d.job_id,
                        owners[d.name], d.delivery_count, ", its handler had started" if d.started else "")
            try:
                decide(d, owners[d.name])
            except Exception as exc:  # one bad decision must not stop the others
                log.exception("stream entry %s: disposing of the reclaimed job failed", d.name)
                with self._lock:
                    still = d.name in self._held
                if still:
                    try:
                        reason = unrecoverable(d, owners[d.name], exc) if unrecoverable is not None else None
                        self._dead_letter(d, "reclaim_failed", f"{type(exc).__name__}: {exc}",
                                          reason.get("error") if isinstance(reason, dict) else None)
                    except Exception:
                        log.exception("stream entry %s: cannot move it to the dead letters", d.name)
        return n

    def _job_id_of(self, fields: Any) -> str | None:
        raw = _fields(fields).get(b"job")
        try:
            return peek_job_id(json.loads(raw)) if raw else None
        except ValueError:
            return None
