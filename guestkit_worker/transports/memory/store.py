"""The in-memory transport's store: results, progress events, idempotency keys, the atomic
outcome (``commit``) and the look-ups by job id (status, list, cancel), over the shared state
of a :class:`~.broker.MemoryBroker` (the ResultStore half of the transport)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...job.deadletters import unrunnable
from ...job.states import FINAL_STATUSES
from ...job.timestamps import stamp as now_iso
from ..base import CancelledDocuments, JobStatus, Outcome, Page, QueuedJob, Reservation
from ..common import forget_finished, job_status_of, jobs_page, peek
from .broker import KeyHold

#: one shared encoder (stateless, so threads share it): compact, UTF-8, no NaN
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class StoreMixin:
    """The ResultStore methods, commit, job_status, list_jobs, cancel and maintain of
    :class:`~.transport.MemoryTransport`, which provides the broker and the claim checks."""

    # -- results and progress -----------------------------------------------------------
    def encode_result(self, result: Mapping[str, Any]) -> bytes:
        return _ENCODER.encode(result).encode("utf-8", "surrogatepass")

    def get_result(self, job_id: str) -> dict | None:
        with self.broker.cond:
            self.broker.check()
            raw = self.broker.results.get(job_id)
        return json.loads(raw) if raw is not None else None

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        """Woken by the commit or cancel that stores the result."""
        b, end = self.broker, time.monotonic() + timeout
        with b.cond:
            while True:
                b.check()
                raw = b.results.get(job_id)
                result = json.loads(raw) if raw is not None else None
                left = end - time.monotonic()
                if (result is not None and result.get("status") in FINAL_STATUSES) or left <= 0:
                    return result
                b.cond.wait(left)

    def append_progress(self, job_id: str, event: Mapping[str, Any]) -> None:
        """Best effort: dropped while the broker is unavailable or when JSON cannot hold it."""
        try:
            line = _ENCODER.encode(event)
        except (TypeError, ValueError):
            return
        with self.broker.cond:
            if self.broker.outage is None:
                self.broker.progress.setdefault(job_id, []).append(line)

    def read_progress(self, job_id: str, after: int = 0) -> list:
        with self.broker.cond:
            self.broker.check()
            lines = list(self.broker.progress.get(job_id, ())[max(0, int(after)):])
        return [json.loads(line) for line in lines]

    # -- idempotency keys ---------------------------------------------------------------
    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        """One step under the broker's lock; a key held by a worker that is no longer alive,
        or completed by a job whose result is gone, is taken over."""
        b = self.broker
        with b.cond:
            b.check()
            hold = b.keys.get(key)
            if hold is not None and hold.state == "completed" and hold.job_id in b.results:
                return Reservation(False, hold.job_id, "completed", json.loads(b.results[hold.job_id]))
            if hold is not None and hold.state == "running" and hold.job_id != job_id and \
                    b.owner_alive(hold.worker_id, hold.token):
                return Reservation(False, hold.job_id, "running")
            b.keys[key] = KeyHold(job_id, "running", self.worker_id, self._token)
            return Reservation(True)

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        with self.broker.cond:
            self.broker.check()
            self._release_key(key, job_id)

    def _release_key(self, key: str, job_id: str | None) -> None:
        hold = self.broker.keys.get(key)
        if hold is not None and hold.job_id == job_id and hold.state == "running":
            del self.broker.keys[key]

    # -- the outcome --------------------------------------------------------------------
    def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Each outcome in one step: result stored, job state set, idempotency key kept or
        released, delivery acknowledged (or queued again: ``release``, or a job rejected
        without a result whose id is known; or dead-lettered: poison).  Only the entry that is
        the job may write its state and result.  An outcome whose delivery another worker owns
        now gets LeaseLost; while the broker is unavailable every outcome gets its error."""
        encoded = []
        for o in outcomes:
            o.error = None
            try:
                body = o.encoded if o.encoded is not None else (
                    self.encode_result(o.result) if o.result is not None else None)
            except (TypeError, ValueError) as exc:  # a result JSON cannot hold
                o.error = exc
                continue
            encoded.append((o, body))
        b = self.broker
        with b.cond:
            for o, body in encoded:
                try:
                    b.check()
                except OSError as exc:
                    o.error = exc
                    continue
                if self._claim_of(o.delivery) is None:
                    o.error = self._lose(o.delivery)
                    continue
                self._store(o, body)
            b.cond.notify_all()

    def _store(self, o: Outcome, body: bytes | None) -> None:
        b, d = self.broker, o.delivery
        entry = b.claims[d.entry].entry
        job = b.jobs.get(entry.job_id or "")
        own = job is not None and job.entry == entry.id  # this entry is the job
        without_result = o.status == "rejected" and o.result is None
        requeue = o.release or (without_result and own and d.job_id == entry.job_id)
        if own and not (without_result and requeue):
            if body is not None:
                b.results[job.job_id] = body
            result = o.result if isinstance(o.result, dict) else {}
            job.status = "completed" if o.status == "duplicate" else o.status
            job.completed_at = result.get("completed_at") or result.get("failed_at") or now_iso()
            error = result.get("error") if result else (o.reason or {}).get("error")
            job.error = error if isinstance(error, dict) else None
            job.cancel, job.ended = False, b.clock()
            if o.idempotency_key and o.status == "completed":
                b.keys[o.idempotency_key] = KeyHold(job.job_id, "completed", self.worker_id, ended=b.clock())
        if o.idempotency_key and o.status != "completed":
            self._release_key(o.idempotency_key, d.job_id)
        if requeue:
            self._requeue(d, d.raw)
        elif without_result:  # poison: no job it could be queued again as
            self._held.discard(d.generation)
            error = o.reason.get("error") if isinstance(o.reason, dict) else None
            detail = str(error.get("message", "")) if isinstance(error, dict) else ""
            why = unrunnable(entry.raw, self.max_job_bytes)
            reason = why[0] if why else "rejected"
            b.dead_letter(entry, reason, detail or (why[1] if why else ""), self.worker_id)
            self.observer.dead_lettered(reason)
        else:
            del b.claims[entry.id]
            self._held.discard(d.generation)

    # -- look-ups by job id -------------------------------------------------------------
    def job_status(self, job_id: str) -> JobStatus | None:
        with self.broker.cond:
            self.broker.check()
            job = self.broker.jobs.get(job_id)
            return job_status_of(job) if job is not None else None

    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        """Newest first.  The page token is the creation number of the last job shown: the
        next page starts after it even when newer jobs arrived meanwhile."""
        limit = max(1, min(int(limit), 1000))
        try:
            below = int(page_token) if page_token else None
        except ValueError:
            raise ValueError("invalid page token") from None
        b = self.broker
        with b.cond:
            b.check()
            return jobs_page(reversed(list(b.jobs.values())), limit, below, status, operation)

    def cancel(self, job_id: str, cancelled: CancelledDocuments) -> str:
        """A job still waiting is taken out of the queue and stores the result ``cancelled``
        builds; a delivered or running one is flagged for its worker (cancel_requests)."""
        b = self.broker
        with b.cond:
            b.check()
            job = b.jobs.get(job_id)
            if job is None:
                return "not_found"
            if job.status in FINAL_STATUSES:
                return "finished"
            if job.entry in b.waiting:
                entry = b.waiting[job.entry]
                result, _reason = cancelled(QueuedJob(job_id, entry.name, self.worker_id,
                                                      peek(entry.raw, self.max_job_bytes)[1], job.operation,
                                                      job.attempt))
                body = self.encode_result(result)
                del b.waiting[job.entry]
                b.results[job_id] = body
                error = result.get("error")
                job.status, job.completed_at = "cancelled", result.get("failed_at") or now_iso()
                job.error, job.ended = error if isinstance(error, dict) else None, b.clock()
                b.cond.notify_all()
                return "cancelled"
            if not job.cancellable:
                return "not_cancellable"
            job.cancel = True
            return "cancelling"

    def maintain(self) -> None:
        """Forget finished jobs (state, result, progress, completed key) result_ttl after they
        ended, and marks of jobs released as meant for another worker that have run out."""
        b = self.broker
        with b.cond:
            b.check()
            now = b.clock()
            forget_finished(b, now, now - self.result_ttl)
