"""Where a job is and what can be done to it (:class:`RedisIndex`): ``job_status``,
``list_jobs`` (newest first, from the pool's index sorted set) and ``cancel``, read from the
per-job state hashes, and the index's housekeeping (``maintain``)."""

from __future__ import annotations

import json
import re
from typing import Any

from ...job.states import FINAL_STATUSES
from ..base import CancelledDocuments, InvalidPageToken, JobStatus, Page, QueuedJob
from .keys import GROUP
from .link import RedisLink
from .store import encode_result

#: how many index members list_jobs reads per round while filtering
_CHUNK = 200
#: a page token: the last job's score (milliseconds) and its index member (a job id, at most 128
#: characters when admitted; up to 1024 are taken for a producer's own)
_TOKEN = re.compile(r"([0-9]{1,18}):([^\x00-\x20]{1,1024})")


def _decode_token(token: str) -> tuple[str, str]:
    """(score, job id) of a ``SCORE:JOB_ID`` page token; InvalidPageToken for anything else
    (the token comes from a client: a sign, a huge or non-ASCII number, no job id)."""
    found = _TOKEN.fullmatch(token)
    if found is None:
        raise InvalidPageToken()
    return str(int(found.group(1))), found.group(2)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _status_of(job_id: str, h: dict) -> JobStatus:
    g = {(_text(a) or ""): _text(b) for a, b in h.items()}
    status = g.get("status") or "pending"
    try:
        attempt = int(g["attempt"]) if g.get("attempt") else None
    except ValueError:
        attempt = None
    try:
        error = json.loads(g["error"]) if g.get("error") else None
    except ValueError:
        error = None
    return JobStatus(job_id=job_id, status=status, operation=g.get("operation") or None, attempt=attempt,
                     worker_id=g.get("worker_id"), submitted_at=g.get("submitted_at"),
                     started_at=g.get("started_at"), completed_at=g.get("completed_at"), error=error,
                     cancellable=status not in FINAL_STATUSES and g.get("cancellable") != "0")


class RedisIndex:
    """job_status, list_jobs, cancel and maintain over ``link``."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def job_status(self, job_id: str) -> JobStatus | None:
        link = self.link
        with link.guard("status"):
            h = link.r.hgetall(link.k.job(job_id))
            if not h:
                return None
            status = _status_of(job_id, h)
            self._mark_gone([status])
        return status

    def _mark_gone(self, jobs: list) -> None:
        """Flag the running jobs whose worker's liveness key has expired (worker_gone): they
        wait for another worker to take them over, nothing runs them."""
        link = self.link
        running = [j for j in jobs if j.status == "running" and j.worker_id]
        if not running:
            return
        pipe = link.r.pipeline(transaction=False)
        for j in running:
            pipe.exists(link.k.alive(j.worker_id))
        for j, alive in zip(running, pipe.execute()):
            j.worker_gone = not alive

    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        """Newest first.  The page token is ``SCORE:JOB_ID`` of the last job shown: the next
        page starts after it even when newer jobs arrived meanwhile."""
        limit = max(1, min(int(limit), 1000))
        top, after = "+inf", None
        if page_token:
            top, after = _decode_token(page_token)
        link, k = self.link, self.link.k
        jobs, nxt = [], None
        with link.guard("list"):
            offset = 0
            while len(jobs) < limit:
                members = link.r.zrevrangebyscore(k.index, top, "-inf", start=offset, num=_CHUNK,
                                                  withscores=True)
                if not members:
                    break
                offset += len(members)
                rows = [(_text(m), int(s)) for m, s in members]
                if after is not None:  # same score: members come in descending order
                    rows = [(m, s) for m, s in rows if not (str(s) == top and m >= after)]
                pipe = link.r.pipeline(transaction=False)
                for m, _ in rows:
                    pipe.hgetall(k.job(m))
                for (m, s), h in zip(rows, pipe.execute()):
                    if not h:
                        continue  # expired with its result; maintain() drops it from the index
                    js = _status_of(m, h)
                    if (status and js.status != status) or (operation and js.operation != operation):
                        continue
                    if len(jobs) == limit:
                        break
                    jobs.append(js)
                    nxt = f"{s}:{m}"
                if len(members) < _CHUNK:
                    break
            self._mark_gone(jobs)
        return Page(jobs=jobs, next_page_token=nxt if len(jobs) == limit else None)

    def cancel(self, job_id: str, cancelled: CancelledDocuments) -> str:
        """One script decides and acts atomically, so the documents of a cancelled waiting job
        are built before it runs, from the job hash (its entry's document stays in the
        stream): stored only when the job still waits."""
        link, k = self.link, self.link.k
        with link.guard("cancel"):
            facts = link.r.hmget(k.job(job_id), "operation", "attempt", "entry")
            op, attempt, entry = (_text(v) for v in facts)
            queued = QueuedJob(job_id, entry or job_id, link.worker_id, None, op or None,
                               int(attempt) if attempt and attempt.isdigit() else None)
            result, _reason = cancelled(queued)
            ended = result.get("failed_at") or result.get("completed_at") or ""
            answer = link.s.cancel(keys=[k.jobs, k.job(job_id), k.result(job_id)],
                                   args=[GROUP, encode_result(result), link.result_ttl, ended,
                                         json.dumps(result.get("error"))])
        return _text(answer)

    def maintain(self) -> None:
        """Drop index members whose job has expired; remove consumers of workers long gone
        (no pending entries, idle longer than ``stale_consumer_seconds``)."""
        link, k = self.link, self.link.k
        with link.guard("maintain"):
            cutoff = int((link.redis_time() - link.result_ttl) * 1000)
            old = [_text(m) for m in link.r.zrangebyscore(k.index, "-inf", cutoff, start=0, num=1000)]
            if old:
                pipe = link.r.pipeline(transaction=False)
                for m in old:
                    pipe.exists(k.job(m))
                gone = [m for m, e in zip(old, pipe.execute()) if not e]
                if gone:
                    link.r.zrem(k.index, *gone)
            idle_ms = link.stale_consumer_seconds * 1000
            for c in link.r.xinfo_consumers(k.jobs, GROUP):
                name = _text(c.get("name"))
                if name != link.worker_id and not c.get("pending") and int(c.get("idle") or 0) > idle_ms:
                    link.s.leave(keys=[k.jobs], args=[GROUP, name])
