"""The in-memory transport's dead letters (:class:`DeadMixin`): listed newest first, read,
queued again as a new entry, and deleted, each in one step under the broker's lock."""

from __future__ import annotations

from ..base import DeadLetter, DeadPage, DeadRequeue
from ..common import dead_letter_of, dead_page, dead_page_args, peek


class DeadMixin:
    """dead_list, dead_get, dead_requeue and dead_purge of :class:`~.transport.MemoryTransport`,
    which provides the broker and ``_new_job``."""

    def dead_list(self, limit: int = 100, page_token: str | None = None) -> DeadPage:
        limit, below = dead_page_args(limit, page_token)
        b = self.broker
        with b.cond:
            b.check()
            rows = b.dead_rows()[::-1]
        return dead_page(rows, limit, below)

    def dead_get(self, entry: str) -> DeadLetter | None:
        b = self.broker
        with b.cond:
            b.check()
            i = b.dead_index(entry) if isinstance(entry, str) else None
            return dead_letter_of(b.dead_rows()[i], with_raw=True) if i is not None else None

    def dead_requeue(self, entry: str) -> DeadRequeue:
        b = self.broker
        with b.cond:
            b.check()
            i = b.dead_index(entry) if isinstance(entry, str) else None
            if i is None:
                return DeadRequeue("not_found")
            row = b.dead_rows()[i]
            job_id, doc = peek(row["raw"], max(self.max_job_bytes, len(row["raw"])))
            job = b.jobs.get(job_id) if job_id is not None else None
            if job is not None and job.entry != row["id"] and not job.unrun:
                return DeadRequeue("refused", job_id=job_id, reason="duplicate_job_id",
                                   detail=f"job {job_id} is known as entry-{job.entry} ({job.status})")
            new = b.add_entry(row["raw"], job_id)
            if job_id is not None:
                self._new_job(job_id, new, doc)
            b.drop_dead(i)
        return DeadRequeue("queued", location=new.name, job_id=job_id)

    def dead_purge(self, entry: str) -> bool:
        b = self.broker
        with b.cond:
            b.check()
            i = b.dead_index(entry) if isinstance(entry, str) else None
            if i is None:
                return False
            b.drop_dead(i)
            return True
