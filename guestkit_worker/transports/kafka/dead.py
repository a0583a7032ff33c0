"""The Kafka transport's dead letters as the ``dead`` command and endpoints see them: listed
newest first, read with their bytes, queued again as a new entry, and deleted, each one command
in the pool's state topic.  The dead-letter topic keeps its record of every dead letter as
written (an append-only log): requeue and purge change the pool's state, not that topic."""

from __future__ import annotations

from ...job.deadletters import job_id_of
from ...job.decode import decode_job_bytes
from ...job.timestamps import stamp as now_iso
from ..base import DeadLetter, DeadPage, DeadRequeue
from ..common import DEAD_ENTRY, dead_letter_of, dead_page, dead_page_args, digest
from .intake import facts_of


class DeadMixin:
    """dead_list, dead_get, dead_requeue and dead_purge of :class:`~.transport.KafkaTransport`."""

    def dead_list(self, limit: int = 100, page_token: str | None = None) -> DeadPage:
        limit, below = dead_page_args(limit, page_token)
        statelog = self._synced("dead_list")
        with statelog.cond:
            rows = list(statelog.state.dead)[::-1]
        return dead_page(rows, limit, below)

    def dead_get(self, entry: str) -> DeadLetter | None:
        if not isinstance(entry, str) or not DEAD_ENTRY.fullmatch(entry):
            return None
        statelog = self._synced("dead_get")
        with statelog.cond:
            row = statelog.state.dead_row(entry)
            return dead_letter_of(row, with_raw=True) if row is not None else None

    def dead_requeue(self, entry: str) -> DeadRequeue:
        letter = self.dead_get(entry)
        if letter is None:
            return DeadRequeue("not_found")
        limit = max(self.max_job_bytes, len(letter.raw))
        job_id = job_id_of(letter.raw, limit)
        facts = facts_of(decode_job_bytes(letter.raw, limit), "") if job_id is not None else None
        if facts is not None:
            facts["digest"] = digest(decode_job_bytes(letter.raw, limit))
        a = self._call({"op": "dead_requeue", "entry": entry, "job_id": job_id, "facts": facts,
                        "at": now_iso()}, "dead_requeue")
        return DeadRequeue(a["outcome"], location=a.get("location"), job_id=a.get("job_id"),
                           reason=a.get("reason"), detail=a.get("detail"))

    def dead_purge(self, entry: str) -> bool:
        if not isinstance(entry, str) or not DEAD_ENTRY.fullmatch(entry):
            return False
        return bool(self._call({"op": "dead_purge", "entry": entry}, "dead_purge"))
