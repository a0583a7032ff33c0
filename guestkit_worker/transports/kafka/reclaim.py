"""Taking over the deliveries of dead workers and of lapsed leases in the Kafka transport (the
``reclaim`` of :class:`~..base.JobQueue`), and the dead-letter topic: an entry delivered more
than ``max_deliveries`` times, one no worker can read (rejected without a job id) and one
whose recovery raised are written there, with their reason in the record's headers."""

from __future__ import annotations

import contextlib
import json
import logging

from ...job.timestamps import stamp as now_iso
from ..base import Delivery, ReclaimDecision, UnrecoverableReason
from ..common import ReclaimDisposal

log = logging.getLogger(__name__)


class ReclaimMixin(ReclaimDisposal):
    """reclaim and the dead letters of :class:`~.transport.KafkaTransport`."""

    _reclaim_log = log

    def reclaim(self, decide: ReclaimDecision, limit: int, *,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        """Take over up to limit deliveries whose worker is gone or whose lease ran out, and
        hand each to decide; one whose decision raised is a dead letter, its job failed with the
        error of the reason ``unrecoverable`` builds (DEAD_LETTERED without one).  The replica
        is looked at first: no command is written while nothing has lapsed."""
        if limit <= 0 or self._closed:
            return 0
        statelog = self._synced("reclaim")
        with statelog.cond:
            lapsed = statelog.state.reclaimable(self.worker_id, self._life, statelog.now())
        if not lapsed:
            return 0
        cmd = {"op": "reclaim", "w": self.worker_id, "life": self._life, "limit": limit,
               "lease": self.lease_seconds, "max_deliveries": self.max_deliveries}
        try:
            answer, dead = statelog.call_full(cmd)
        except OSError:
            self.observer.transport_error("reclaim")
            raise
        self._publish_dead(dead)
        for h in answer["taken"]:
            self._dispose(self._delivery(h), h["previous"], decide, unrecoverable)
        return len(answer["taken"])

    def _let_go(self, d: Delivery) -> None:
        """Stop holding d without giving it back: the next reclaim (anyone's) takes it over."""
        self._held.discard(d.generation)
        with contextlib.suppress(OSError):  # then its lease runs out by itself
            self._state_log().send({"op": "let_go", "entry": d.entry, "generation": d.generation})

    def _dead_letter(self, d: Delivery, reason: str, detail: str, error: dict | None) -> None:
        if d.generation not in self._held:
            return
        self._held.discard(d.generation)
        cmd = {"op": "dead", "entry": d.entry, "generation": d.generation, "w": self.worker_id,
               "reason": reason, "detail": detail, "error": error, "at": now_iso()}
        try:
            _answer, dead = self._state_log().call_full(cmd)
        except OSError as exc:
            log.error("%s: cannot move it to the dead letters (%s); its lease runs out", d.name, exc)
            return
        self._publish_dead(dead)

    def _publish_dead(self, letters: list) -> None:
        """Write dead letters to the dead-letter topic (value: the bytes as queued; headers:
        reason, detail, worker, entry, job id) and count each."""
        for letter in letters:
            self.observer.dead_lettered(letter["reason"])
            log.warning("%s (job %s): moved to the dead letters (%s: %s)", letter["entry"], letter["job_id"],
                        letter["reason"], letter["detail"])
            headers = [(k, str(letter[k] or "").encode("utf-8", "backslashreplace"))
                       for k in ("reason", "detail", "worker", "entry", "job_id")]
            headers.append(("size", str(letter["size"]).encode()))
            key = (letter["job_id"] or letter["entry"]).encode("utf-8", "surrogatepass")
            try:
                self._state_log().publish(self.topics.dead, letter["raw"], key=key, headers=headers)
            except OSError as exc:
                self.observer.transport_error("dead_letter")
                log.error("%s: the dead letter could not be written to %s (%s); it stays recorded in the "
                          "pool's state", letter["entry"], self.topics.dead, exc)


def describe_letter(letter: dict) -> str:
    """One line for logs and tests: the dead letter without its bytes."""
    return json.dumps({k: v for k, v in letter.items() if k != "raw"}, sort_keys=True)
