"""Intake: from a delivered job to a run that may start, in the job thread of
:mod:`guestkit_worker.runtime.execution`.

The job is read and decoded, left in the queue when it is routed to another pool or worker,
validated and admitted (guestkit_worker.job.admission), put on the run table (one run per job
id), its job id held across workers, checked against a result stored before under its id,
and its idempotency key reserved.  A job that fails a step is rejected, given back or
recorded as a duplicate, never run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..job import outcomes as docs
from ..job.admission import check_job, routed_elsewhere
from ..job.decode import decode_job_bytes
from ..job.errors import HandlerError, JobValidationError
from ..job.protocol import peek_job_id, pool_accepts, validate_document
from ..job.states import RESULT_STATUSES, JobState
from ..transports.base import Outcome
from .runs import Run

log = logging.getLogger(__name__)

#: How often a job whose idempotency key another worker is running looks again.
KEY_BUSY_RECHECK_SECONDS = 0.2


class Intake:
    """The intake steps of :class:`~guestkit_worker.runtime.execution.Executor`, which provides the
    configuration, transport, run table, clock and the outcome path (``_send_to_committer``, ``_result``,
    ``give_back``)."""

    def _ready_to_run(self, run: Run) -> bool:
        """Parse and check a delivered job; reject, release or mark it duplicate.  True: run it."""
        d, cfg, doc = run.delivery, self.cfg, None
        try:
            doc = decode_job_bytes(self.transport.read(d), cfg.max_job_bytes)
            d.job_id = peek_job_id(doc)
            if routed_elsewhere(doc, cfg.pool, cfg.worker_id):
                log.info("job file %s: meant for another pool or worker; left in the queue", d.name)
                self.transport.release(d, not_for_me=True, other_pool=not pool_accepts(doc, cfg.pool))
                run.to(JobState.PENDING)
                return False
            job = run.job = validate_document(doc)
        except JobValidationError as err:
            self.reject(run, err, doc)
            return False
        d.attempt = job.attempt
        run.operation_label = self.metrics.label_operation(job.operation)
        try:
            run.handler = check_job(job, self.handlers)
        except (JobValidationError, HandlerError) as err:
            self.reject(run, err, doc)
            return False
        if not self.table.add(run):
            err = JobValidationError("job_id", f"a job with id {job.job_id} is already running",
                                     code="DUPLICATE_JOB_ID")
            self.reject(run, err, doc, write_result=False)
            return False
        try:
            if not self._hold_job_id(d):  # another worker runs this id: it runs after that one
                log.info("job %s: already running in another worker; %s returned to the queue",
                         job.job_id, d.name)
                self.table.remove(run)
                self.give_back(run)
                return False
            if self._stored_before(run, doc):
                self.table.remove(run)
                return False
            if job.idempotency_key and not self._reserve_key(run):
                self.table.remove(run)
                return False
        except OSError as exc:  # the store cannot be written: back to the queue, after a back-off
            log.error("job %s: cannot reserve its job id or idempotency key (%s); job returned to the queue",
                      job.job_id, exc)
            self.table.remove(run)
            self.metrics.result_write_failed()
            self.on_backoff()
            self.give_back(run)
            return False
        return True

    def _hold_job_id(self, d: Any) -> bool:
        """Mark the job id running here; one pause and second try before the job is given back
        (so a lone job file of a busy id is not claimed and given back in a tight loop)."""
        if self.transport.hold_job_id(d):
            return True
        if not self.stopping():
            time.sleep(KEY_BUSY_RECHECK_SECONDS)
        return self.transport.hold_job_id(d)

    def _stored_before(self, run: Run, doc: Any) -> bool:
        """A result is stored under this job id already: never overwrite it.  True when the job
        was disposed of: rejected (DUPLICATE_JOB_ID, recorded in failed/ only), or, for this
        worker's own outcome whose archive failed, archived now with that result.  A result of
        an earlier attempt, or a shutdown's ``cancelled`` (the job was given back), is replaced."""
        job = run.job
        if run.delivery.no_result_yet and run.delivery.job_id == job.job_id:
            return False
        try:
            earlier = self.transport.get_result(job.job_id)
        except ValueError:  # something unreadable is stored under this id: keep it
            earlier = {}
        except OSError:  # cannot tell now: storing the outcome will tell
            return False
        if earlier is None or _replaceable(earlier, job.attempt):
            return False
        summary = earlier.get("execution_summary")
        attempt = summary.get("attempt") if isinstance(summary, dict) else None
        status, error = earlier.get("status"), earlier.get("error")
        mine = earlier.get("worker_id") == self.cfg.worker_id and attempt == job.attempt
        if mine and status in RESULT_STATUSES:
            log.info("job %s: its outcome (%s) was stored before; archiving it", job.job_id, status)
            completed = status == "completed"
            reason = None if completed else docs.reason_document(run.delivery.name, job.job_id, status,
                                                                 self.cfg.worker_id, error)
            self._send_to_committer(run, Outcome(run.delivery, status, result=earlier, staged=True,
                                                 reason=reason, failed=not completed,
                                                 idempotency_key=job.idempotency_key if completed else None))
            return True
        err = JobValidationError("job_id", f"job id {job.job_id} already has a result ({status}, attempt "
                                 f"{attempt}); a job id is never reused, so this job was not run",
                                 code="DUPLICATE_JOB_ID")
        self.reject(run, err, doc, write_result=False)
        return True

    def _reserve_key(self, run: Run) -> bool:
        """Hold the job's idempotency key before it runs; False when it was disposed of (a
        duplicate of a completed job, or given back at shutdown)."""
        job = run.job
        end = self.clock() + self.cfg.timeout_of(job)
        while True:
            r = self.transport.reserve_idempotency_key(job.idempotency_key, job.job_id)
            if r.won:
                run.key_held = True
                return True
            if r.state == "completed":
                self._duplicate(run, r)
                return False
            if self.stopping() or self.clock() > end:  # another worker runs it: try again later
                self.transport.release(run.delivery)
                return False
            time.sleep(KEY_BUSY_RECHECK_SECONDS)

    def _duplicate(self, run: Run, r: Any) -> None:
        job, earlier = run.job, r.result
        log.info("job %s: idempotency key %s already completed by job %s; not run again",
                 job.job_id, job.idempotency_key, r.holder_job_id)
        result = None
        if r.holder_job_id != job.job_id:  # never overwrite the earlier result itself
            result = self._result(run, "completed", data=earlier.get("data"), outputs=earlier.get("outputs"))
            result["duplicate_of"] = {"job_id": r.holder_job_id, "completed_at": earlier.get("completed_at")}
        run.to(JobState.COMPLETED)
        self._send_to_committer(run, Outcome(run.delivery, "duplicate", result=result))

    def reject(self, run: Run, err: BaseException, doc: Any, write_result: bool = True) -> None:
        """Refuse a delivery: its reason goes to the archive, and a ``failed`` result under its
        job id unless that id's result belongs to another delivery (see _kept_result)."""
        d = run.delivery
        job_id = run.job.job_id if run.job else d.job_id
        error = docs.rejection_error(err)
        kept = self._kept_result(run, job_id) if job_id and write_result else None
        log.warning("job %s: rejected (%s) %s%s", job_id or d.name, error["code"], err,
                    f"; no result written: its job id {kept}" if kept else "")
        result = self._result(run, "failed", error=error) if (job_id and write_result and not kept) else None
        reason = docs.reason_document(d.name, job_id, "rejected", self.cfg.worker_id, error)
        if run.job is None and isinstance(doc, dict) and isinstance(doc.get("operation"), str):
            run.operation_label = self.metrics.label_operation(doc["operation"])
        run.to(JobState.FAILED)
        self._send_to_committer(run, Outcome(d, "rejected", result=result, reason=reason, failed=True))

    def _kept_result(self, run: Run, job_id: str) -> str | None:
        """Why a rejected delivery must not store a result under job_id, or None: another
        delivery of the id runs (the id is held here first, so none can store a result while
        this one looks), or a result is stored that a run of this document would not replace
        either."""
        d = run.delivery
        if d.no_result_yet and d.job_id == job_id:
            return None
        try:
            if not self.transport.hold_job_id(d):
                return "is running"
            earlier = self.transport.get_result(job_id)
        except ValueError:
            return "already has a result (not a JSON object), which is kept"
        except OSError:  # cannot tell now: storing the outcome will tell
            return None
        if earlier is None or _replaceable(earlier, run.job.attempt if run.job else None):
            return None
        return f"already has a result ({earlier.get('status')}), which is kept"


def _replaceable(earlier: dict, attempt: int | None) -> bool:
    """True for a stored result that a new outcome of its job id replaces: a shutdown's
    ``cancelled`` (the job was given back to run again), or an attempt before ``attempt``."""
    if docs.given_back(earlier):
        return True
    summary = earlier.get("execution_summary")
    stored = summary.get("attempt") if isinstance(summary, dict) else None
    return isinstance(stored, int) and attempt is not None and stored < attempt
