"""The Kafka transport's store: results, progress events, idempotency keys, the outcome
(``commit``) and the look-ups by job id (status, list, cancel), all in the pool's state
(the ResultStore half of the transport).  Reads first bring the replica up to the end of the
state topic, so they see every change made before them by any worker."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...job.deadletters import unrunnable
from ...job.states import FINAL_STATUSES
from ...job.timestamps import stamp as now_iso
from ..base import (
    CancelledDocuments,
    InvalidPageToken,
    JobStatus,
    LeaseLost,
    Outcome,
    Page,
    QueuedJob,
    Reservation,
)
from ..common import job_status_of, jobs_page, peek

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: how often a cancel looks again when the job moved between its look and its command
CANCEL_TRIES = 5


class StoreMixin:
    """The ResultStore methods, commit, job_status, list_jobs, cancel and maintain of
    :class:`~.transport.KafkaTransport`."""

    # -- results and progress ------------------------------------------------------------
    def encode_result(self, result: Mapping[str, Any]) -> bytes:
        return _ENCODER.encode(result).encode("utf-8", "surrogatepass")

    def get_result(self, job_id: str) -> dict | None:
        statelog = self._synced("get_result")
        with statelog.cond:
            text = statelog.state.results.get(job_id)
        return json.loads(text) if text is not None else None

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        """Woken by the replica applying the commit or cancel that stores the result."""
        statelog, end = self._synced("wait_result"), time.monotonic() + timeout
        with statelog.cond:
            while True:
                text = statelog.state.results.get(job_id)
                result = json.loads(text) if text is not None else None
                left = end - time.monotonic()
                if (result is not None and result.get("status") in FINAL_STATUSES) or left <= 0:
                    return result
                statelog.cond.wait(left)

    def append_progress(self, job_id: str, event: Mapping[str, Any]) -> None:
        """Best effort: dropped when the broker cannot take it or JSON cannot hold it."""
        try:
            line = _ENCODER.encode(event)
            self._call({"op": "progress", "job_id": job_id, "event": line}, "progress")
        except (TypeError, ValueError, OSError):
            return

    def read_progress(self, job_id: str, after: int = 0) -> list:
        statelog = self._synced("read_progress")
        with statelog.cond:
            lines = list(statelog.state.progress.get(job_id, ())[max(0, int(after)):])
        return [json.loads(line) for line in lines]

    # -- idempotency keys ----------------------------------------------------------------
    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        """Decided by the state's order; a key held by a worker that is no longer alive, or
        completed by a job whose result is gone, is taken over."""
        a = self._call({"op": "reserve", "key": key, "job_id": job_id, "w": self.worker_id,
                        "life": self._life}, "reserve")
        if a["won"]:
            return Reservation(True)
        result = self.get_result(a["holder"]) if a["state"] == "completed" else None
        return Reservation(False, a["holder"], a["state"], result)

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        self._call({"op": "unreserve", "key": key, "job_id": job_id}, "release_key")

    # -- the outcome ---------------------------------------------------------------------
    def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Each outcome in one command: result stored, job state set, idempotency key kept or
        released, delivery acknowledged (or queued again: ``release``, or a job rejected
        without a result whose id is known; or dead-lettered: poison).  The commands of a batch
        are written together and their answers awaited together (one round trip).  An outcome
        whose delivery another worker owns now gets LeaseLost; storage trouble its OSError."""
        sent = []
        for o in outcomes:
            o.error = None
            try:
                cmd = self._commit_command_of(o)
                if cmd is not None:
                    sent.append((o, self._state_log().send(cmd)))
            except (TypeError, ValueError, OSError) as exc:
                o.error = exc
        for o, slot in sent:
            try:
                answer, dead = self._state_log().wait(slot)
            except OSError as exc:
                o.error = exc
                self.observer.transport_error("commit")
                continue
            if answer == "lost":
                o.error = self._lose(o.delivery)
                continue
            self._held.discard(o.delivery.generation)
            self._publish_dead(dead)

    def _commit_command_of(self, o: Outcome) -> dict | None:
        """The commit command of o, or None (o.error set) when its delivery is known lost."""
        d = o.delivery
        if d.lost or d.generation not in self._held:
            o.error = self._lose(d) if not d.lost else LeaseLost(f"{d.name} now belongs to another worker")
            return None
        body = o.encoded if o.encoded is not None else (
            self.encode_result(o.result) if o.result is not None else None)
        self._state_log().reachable()
        return self._commit_command(o, body)

    def _commit_command(self, o: Outcome, body: bytes | None) -> dict:
        result = o.result if isinstance(o.result, dict) else {}
        error = result.get("error") if result else (o.reason or {}).get("error")
        reason_error = (o.reason or {}).get("error") if isinstance(o.reason, dict) else None
        detail = str(reason_error.get("message", "")) if isinstance(reason_error, dict) else ""
        why = _why_unrunnable(o.delivery, self.max_job_bytes) if o.status == "rejected" else None
        return {"op": "commit", "entry": o.delivery.entry, "generation": o.delivery.generation,
                "w": self.worker_id, "job_id": o.delivery.job_id, "status": o.status,
                "result": body.decode("utf-8", "surrogatepass") if body is not None else None,
                "error": error if isinstance(error, dict) else None,
                "completed_at": result.get("completed_at") or result.get("failed_at"),
                "key": o.idempotency_key, "release": o.release, "at": now_iso(),
                "reason": why[0] if why else None, "detail": detail or (why[1] if why else "")}

    # -- look-ups by job id --------------------------------------------------------------
    def job_status(self, job_id: str) -> JobStatus | None:
        statelog = self._synced("job_status")
        with statelog.cond:
            job = statelog.state.jobs.get(job_id)
            return job_status_of(job) if job is not None else None

    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        """Newest first.  The page token is the creation number of the last job shown."""
        limit = max(1, min(int(limit), 1000))
        try:
            below = int(page_token) if page_token else None
        except ValueError:
            raise InvalidPageToken() from None
        statelog = self._synced("list_jobs")
        with statelog.cond:
            return jobs_page(reversed(list(statelog.state.jobs.values())), limit, below, status, operation)

    def cancel(self, job_id: str, cancelled: CancelledDocuments) -> str:
        """A job still waiting is taken out of the queue and stores the result ``cancelled``
        builds; a running one is flagged for its worker (cancel_requests)."""
        for _ in range(CANCEL_TRIES):
            cmd = self._cancel_command(job_id, cancelled)
            if isinstance(cmd, str):
                return cmd
            answer = self._call(cmd, "cancel")
            if answer != "moved":
                return answer
        return "cancelling"

    def _cancel_command(self, job_id: str, cancelled: CancelledDocuments) -> Any:
        statelog = self._synced("cancel")
        with statelog.cond:
            s = statelog.state
            job = s.jobs.get(job_id)
            if job is None:
                return "not_found"
            if job.status in FINAL_STATUSES:
                return "finished"
            entry = s.waiting.get(job.entry)
            queued = None if entry is None else QueuedJob(job_id, entry.name, self.worker_id,
                                                          peek(entry.raw, self.max_job_bytes)[1],
                                                          job.operation, job.attempt)
        cmd = {"op": "cancel", "job_id": job_id, "at": now_iso()}
        if queued is not None:
            result, _reason = cancelled(queued)
            error = result.get("error")
            cmd.update(entry=job.entry, result=self.encode_result(result).decode("utf-8", "surrogatepass"),
                       error=error if isinstance(error, dict) else None, completed_at=result.get("failed_at"))
        return cmd

    def maintain(self) -> None:
        """Forget finished jobs (state, result, progress, completed key) result_ttl after they
        ended, and marks of jobs released as meant for another worker that have run out."""
        self._call({"op": "maintain", "ttl": self.result_ttl}, "maintain")


def _why_unrunnable(d: Any, max_bytes: int) -> tuple | None:
    """(reason, detail) of a delivery that can never be a job (the dead letter's reason code),
    or None; a record too large to be kept in the state has only its size there."""
    if d.size > len(d.raw):
        return "too_large", f"{d.size} bytes, larger than the limit of {max_bytes} bytes (--max-job-size)"
    return unrunnable(d.raw, max_bytes)
