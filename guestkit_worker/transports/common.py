"""Steps that the transports holding their pool's state as rows in one process (the in-memory
broker, the Kafka state log's replica) take the same way: disposing of a reclaimed delivery,
queueing a job's entry again, forgetting finished jobs, and paging through the jobs and the
dead letters newest first; and what the transports read of a job's bytes (:func:`peek`) and
compare of two submissions (:func:`digest`)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..job.states import FINAL_STATUSES
from .base import (
    DeadLetter,
    DeadPage,
    Delivery,
    InvalidPageToken,
    JobStatus,
    Page,
    ReclaimDecision,
    UnrecoverableReason,
)

DEAD_ENTRY = re.compile(r"entry-[0-9]{1,18}")


def digest(doc: Mapping[str, Any]) -> str:
    """What makes two submissions of one job id 'the same document'."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def peek(raw: bytes, max_bytes: int) -> tuple:
    """(job id, document) of a queued entry's bytes, or (None, None) when they are over
    max_bytes or not a JSON object with a non-empty string job_id (the worker rejects such an
    entry)."""
    if len(raw) > max_bytes:
        return None, None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, None
    job_id = doc.get("job_id") if isinstance(doc, dict) else None
    return (job_id, doc) if isinstance(job_id, str) and job_id else (None, None)


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


def dead_letter_of(row: dict, *, with_raw: bool) -> DeadLetter:
    """The dead letter a state row describes, with its bytes only when with_raw."""
    return DeadLetter(row["entry"], row["reason"], row["detail"], row.get("job_id"), row["at"],
                      row["raw"] if with_raw else None)


def dead_page_args(limit: int, page_token: str | None) -> tuple[int, int | None]:
    """dead_list's limit clamped to 1..1000 and the entry number its page token starts below
    (None for the first page); checked before any state is read.

    Raises:
        InvalidPageToken: the token is not an ``entry-N`` this listing hands out.
    """
    limit = max(1, min(int(limit), 1000))
    if page_token and not DEAD_ENTRY.fullmatch(page_token):
        raise InvalidPageToken()
    return limit, int(page_token.split("-", 1)[1]) if page_token else None


def dead_page(rows: list[dict], limit: int, below: int | None) -> DeadPage:
    """One page of the dead-letter rows (given newest first) whose number is under below."""
    if below is not None:
        rows = [r for r in rows if r["id"] < below]
    page = [dead_letter_of(r, with_raw=False) for r in rows[:limit]]
    return DeadPage(page, page[-1].entry if len(rows) > limit else None)


def forget_finished(pool: Any, now: float, cutoff: float) -> None:
    """Forget in pool (an in-process state with jobs, results, progress, keys, waiting and
    claims) the jobs in a final status that ended before cutoff and are neither waiting nor
    claimed, with their result and progress; the idempotency keys that ended before cutoff;
    and the marks of jobs released as meant for another worker that have run out by now."""
    for job in [j for j in pool.jobs.values() if j.ended is not None and j.ended < cutoff]:
        if job.status in FINAL_STATUSES and job.entry not in pool.waiting and job.entry not in pool.claims:
            del pool.jobs[job.job_id]
            pool.results.pop(job.job_id, None)
            pool.progress.pop(job.job_id, None)
    for key in [k for k, h in pool.keys.items() if h.ended is not None and h.ended < cutoff]:
        del pool.keys[key]
    for entry in pool.waiting.values():
        for worker in [w for w, until in entry.skip.items() if until <= now]:
            del entry.skip[worker]


def follow_requeue(jobs: dict, old: Any, new_entry: int, attempt: int | None) -> None:
    """The job of entry old, queued again as new_entry, follows it when it named old: pending
    again, with no worker and no start time (and attempt when given); a duplicate's entry
    leaves the job alone."""
    job = jobs.get(old.job_id or "")
    if job is not None and job.entry == old.id:
        job.entry, job.status, job.ended = new_entry, "pending", None
        job.worker_id = job.started_at = None
        if attempt is not None:
            job.attempt = attempt


def job_status_of(job: Any) -> JobStatus:
    """The status a job row (with the fields of a Redis job hash) answers; a job in a final
    status is never cancellable."""
    return JobStatus(job.job_id, job.status, operation=job.operation, attempt=job.attempt,
                     worker_id=job.worker_id, submitted_at=job.submitted_at, started_at=job.started_at,
                     completed_at=job.completed_at, error=job.error,
                     cancellable=job.status not in FINAL_STATUSES and job.cancellable)


def jobs_page(jobs: Iterable[Any], limit: int, below: int | None, status: str | None,
              operation: str | None) -> Page:
    """One page of list_jobs from the job rows (given newest first): those created before the
    creation number below that match status and operation.  The next page token is the
    creation number of the last job shown, so the next page starts after it even when newer
    jobs arrived meanwhile."""
    page, last = Page(), None
    for job in jobs:
        if (below is not None and job.seq >= below) or (status and job.status != status) or \
                (operation and job.operation != operation):
            continue
        if len(page.jobs) == limit:
            page.next_page_token = str(last)
            break
        page.jobs.append(job_status_of(job))
        last = job.seq
    return page
