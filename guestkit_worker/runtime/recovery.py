"""Recovery: what happens to a job a dead worker had taken, decided for each delivery the
transport reclaims (JobQueue.reclaim).

* not started, or not a valid job: back to the queue (admitted again, and rejected then with
  the full reason);
* its result was stored before the worker died: acknowledged with that result (and counted);
  a shutdown's ``cancelled`` (outcomes.given_back) is not: that run had ended and the job was
  returned to the queue, so the run that was in progress is another one;
* attempts left: re-queued as attempt + 1;
* otherwise: failed with WORKER_CRASHED.
Whatever goes wrong with one job fails that job alone (RECOVERY_FAILED), never the others.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..job import outcomes as docs
from ..job.decode import decode_job_bytes
from ..job.errors import JobValidationError
from ..job.protocol import validate_document
from ..job.states import JobState
from ..transports.base import Outcome
from .runs import Run

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, transport: Any, store: Callable[[Run, Outcome], None], *, worker_id: str,
                 max_job_bytes: int, label: Callable[[str], str]) -> None:
        self.transport, self.store = transport, store
        self.worker_id, self.max_job_bytes, self.label = worker_id, max_job_bytes, label

    def reclaim(self, limit: int = 1 << 30) -> int:
        n = self.transport.reclaim(self.decide, limit, unrecoverable=self.unrecoverable)
        if n:
            log.warning("recovered %d job(s) left by dead workers", n)
        return n

    def decide(self, delivery: Any, dead_worker: str) -> None:
        """Dispose of one delivery a dead worker left (the transport's ReclaimDecision)."""
        try:
            self._decide(delivery, dead_worker)
        except OSError:
            raise  # storage trouble: the transport keeps the job and offers it again later
        except Exception as exc:
            log.exception("job %s: recovering it from worker %s failed; archiving it as failed",
                          delivery.name, dead_worker)
            outcome = Outcome(delivery, "failed", reason=self.unrecoverable(delivery, dead_worker, exc),
                              failed=True)
            self.transport.commit([outcome])
            if outcome.error is not None:
                raise outcome.error from exc

    def unrecoverable(self, delivery: Any, dead_worker: str, exc: BaseException) -> dict:
        """The reason kept beside a job whose recovery raised (RECOVERY_FAILED): here, and by the
        transport when even archiving it with this reason raised (UnrecoverableReason)."""
        error = docs.error_document("RECOVERY_FAILED", f"recovering the job left by worker {dead_worker} "
                                    f"failed: {type(exc).__name__}: {exc}", phase="recovery")
        return docs.reason_document(delivery.name, delivery.job_id, "failed", self.worker_id, error)

    def _decide(self, delivery: Any, dead_worker: str) -> None:
        run = Run(delivery)
        try:
            doc = decode_job_bytes(self.transport.read(delivery), self.max_job_bytes)
            job = validate_document(doc)
        except JobValidationError:
            self.transport.release(delivery)  # admitted again and rejected with the full reason
            return
        delivery.job_id, delivery.attempt, run.job = job.job_id, job.attempt, job
        run.operation_label = self.label(job.operation)
        if not delivery.started:
            self.transport.release(delivery)
            return
        earlier = self.transport.get_result(job.job_id)
        summary = earlier.get("execution_summary") if earlier else None
        if earlier and earlier.get("worker_id") == dead_worker and isinstance(summary, dict) \
                and summary.get("attempt") == job.attempt and not docs.given_back(earlier):
            status = earlier.get("status")
            log.info("job %s: result was stored before worker %s died; archiving", job.job_id, dead_worker)
            reason = None if status == "completed" else docs.reason_document(
                delivery.name, job.job_id, status, self.worker_id, earlier.get("error"))
            # the key too: the worker may have died before keeping it
            self.store(run, Outcome(delivery, status, result=earlier, staged=True, reason=reason,
                                    failed=status != "completed",
                                    idempotency_key=job.idempotency_key if status == "completed" else None))
            return
        if job.attempt < job.max_attempts:
            doc["execution"] = dict(doc.get("execution") or {}, attempt=job.attempt + 1)
            log.warning("job %s: worker %s died while running attempt %d; re-queued as attempt %d",
                        job.job_id, dead_worker, job.attempt, job.attempt + 1)
            self.transport.retry(delivery, doc)
            return
        error = docs.crash_error(dead_worker, job.attempt, job.max_attempts)
        run.state = JobState.RUNNING
        run.to(JobState.FAILED)
        result = docs.result_document(job_id=job.job_id, status="failed", worker_id=self.worker_id, job=job,
                                      started_at=run.started_at, error=error)
        reason = docs.reason_document(delivery.name, job.job_id, "failed", self.worker_id, error)
        self.store(run, Outcome(delivery, "failed", result=result, failed=True, reason=reason))
