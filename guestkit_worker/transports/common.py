"""Steps that the transports holding their pool's state as rows in one process (the in-memory
broker, the Kafka state log's replica) take the same way: disposing of a reclaimed delivery."""

from __future__ import annotations

import logging

from .base import Delivery, ReclaimDecision, UnrecoverableReason


class ReclaimDisposal:
    """``_dispose`` for a transport's reclaim mixin, which provides ``observer``, ``_let_go``,
    ``_dead_letter`` and ``_reclaim_log`` (its own logger, so messages keep their origin)."""

    _reclaim_log: logging.Logger

    def _dispose(self, d: Delivery, previous: str, decide: ReclaimDecision,
                 unrecoverable: UnrecoverableReason | None) -> None:
        """Hand d, taken over from worker previous, to decide: storage trouble (OSError) lets d
        go, to be offered again at the next reclaim; any other error makes it a dead letter."""
        log = self._reclaim_log
        self.observer.jobs_reclaimed()
        log.warning("%s (job %s): taken over from worker %s (delivery %d%s)", d.name, d.job_id, previous,
                    d.delivery_count, ", its handler had started" if d.started else "")
        try:
            decide(d, previous)
        except OSError as exc:  # storage trouble: offered again at the next reclaim
            log.error("%s: disposing of the reclaimed job failed (%s); trying again later", d.name, exc)
            self._let_go(d)
        except Exception as exc:
            log.exception("%s: disposing of the reclaimed job failed; moved to the dead letters", d.name)
            reason = unrecoverable(d, previous, exc) if unrecoverable is not None else None
            error = reason.get("error") if isinstance(reason, dict) else None
            self._dead_letter(d, "reclaim_failed", f"{type(exc).__name__}: {exc}", error)
