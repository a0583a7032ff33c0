"""Where a job is and what can be done to it: ``job_status``, ``list_jobs`` (newest first, from
the pool's index sorted set) and ``cancel``, read from the per-job state hashes."""

from __future__ import annotations

import json
import re
from typing import Any

from ..base import FINAL_STATUSES, CancelledDocuments, InvalidPageToken, JobStatus, Page, QueuedJob
from .keys import GROUP

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


class IndexMixin:
    """job_status, list_jobs and cancel; state and clients come from the transport."""

    def job_status(self, job_id: str) -> JobStatus | None:
        with self._guard("status"):
            h = self.r.hgetall(self.k.job(job_id))
        return _status_of(job_id, h) if h else None

    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        """Newest first.  The page token is ``SCORE:JOB_ID`` of the last job shown: the next
        page starts after it even when newer jobs arrived meanwhile."""
        limit = max(1, min(int(limit), 1000))
        top, after = "+inf", None
        if page_token:
            top, after = _decode_token(page_token)
        jobs, nxt = [], None
        with self._guard("list"):
            offset = 0
            while len(jobs) < limit:
                members = self.r.zrevrangebyscore(self.k.index, top, "-inf", start=offset, num=_CHUNK,
                                                  withscores=True)
                if not members:
                    break
                offset += len(members)
                rows = [(_text(m), int(s)) for m, s in members]
                if after is not None:  # same score: members come in descending order
                    rows = [(m, s) for m, s in rows if not (str(s) == top and m >= after)]
                pipe = self.r.pipeline(transaction=False)
                for m, _ in rows:
                    pipe.hgetall(self.k.job(m))
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
        return Page(jobs=jobs, next_page_token=nxt if len(jobs) == limit else None)

    def cancel(self, job_id: str, cancelled: CancelledDocuments) -> str:
        """One script decides and acts atomically, so the documents of a cancelled waiting job
        are built before it runs, from the job hash (its entry's document stays in the
        stream): stored only when the job still waits."""
        k = self.k
        with self._guard("cancel"):
            op, attempt, entry = (_text(v) for v in self.r.hmget(k.job(job_id), "operation", "attempt", "entry"))
            queued = QueuedJob(job_id, entry or job_id, self.worker_id, None, op or None,
                               int(attempt) if attempt and attempt.isdigit() else None)
            result, _reason = cancelled(queued)
            ended = result.get("failed_at") or result.get("completed_at") or ""
            answer = self.s.cancel(keys=[k.jobs, k.job(job_id), k.result(job_id)],
                                   args=[GROUP, self.encode_result(result), self.result_ttl, ended,
                                         json.dumps(result.get("error"))])
        return _text(answer)

    def maintain(self) -> None:
        """Drop index members whose job has expired; remove consumers of workers long gone
        (no pending entries, idle over an hour or ten leases)."""
        k = self.k
        with self._guard("maintain"):
            cutoff = int((self._redis_time() - self.result_ttl) * 1000)
            old = [_text(m) for m in self.r.zrangebyscore(k.index, "-inf", cutoff, start=0, num=1000)]
            if old:
                pipe = self.r.pipeline(transaction=False)
                for m in old:
                    pipe.exists(k.job(m))
                gone = [m for m, e in zip(old, pipe.execute()) if not e]
                if gone:
                    self.r.zrem(k.index, *gone)
            idle_ms = self.stale_consumer_seconds * 1000
            for c in self.r.xinfo_consumers(k.jobs, GROUP):
                name = _text(c.get("name"))
                if name != self.worker_id and not c.get("pending") and int(c.get("idle") or 0) > idle_ms:
                    self.s.leave(keys=[k.jobs], args=[GROUP, name])

    def _redis_time(self) -> float:
        sec, usec = self.r.time()
        return sec + usec / 1e6
