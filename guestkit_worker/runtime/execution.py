"""Execution: one delivery from its admission to its outcome, in a job thread.

:meth:`Executor.process` takes the delivery through its intake (guestkit_worker.runtime.intake: read,
admit, hold the job id, reserve the idempotency key), runs its handler under a
HandlerContext, and decides the outcome: completed, retried as attempt + 1, failed, timed out
or cancelled.  The outcome's documents come from guestkit_worker.job.outcomes; storing it is the
``store`` callable's job (the committer).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable

from ..job import outcomes as docs
from ..job.errors import HandlerError, JobCancelled, JobValidationError
from ..job.states import JobState
from ..system.procs import kill_tree_now
from ..transports.base import LeaseLost, Outcome, TransportUnavailable
from .context import HandlerContext
from .intake import Intake
from .runs import Run, RunTable

log = logging.getLogger(__name__)

#: what a stop reason makes of the run: its result status
_STOP_STATUS = {"timeout": "timeout", "shutdown": "cancelled", "cancelled": "cancelled",
                "requested": "cancelled", "lease_lost": None}
#: stop reasons after which the job goes back to the queue (its result says cancelled meanwhile)
_REQUEUED = ("shutdown", "cancelled")


class Executor(Intake):
    """Runs deliveries in job threads (:meth:`process`), stops runs (:meth:`stop`,
    :meth:`cancel_now`, :meth:`abandon`) and hands their outcomes to ``store``.

    clock: monotonic seconds for job deadlines, stop times and the wait for a busy idempotency
    key; the watchdog compares deadlines and stop times with its own clock, so both get the same
    one (default time.monotonic; tests inject one to move time without sleeping)."""

    def __init__(self, cfg: Any, transport: Any, handlers: Any, metrics: Any, table: RunTable,
                 store: Callable[[Run, Outcome], None], *, work_dir: str, stopping: Callable[[], bool],
                 on_start: Callable[[float], None], on_backoff: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.transport, self.handlers, self.metrics = cfg, transport, handlers, metrics
        self.table, self.store, self.work_dir = table, store, work_dir
        self.stopping, self.on_start, self.on_backoff = stopping, on_start, on_backoff
        self.clock = clock
        self.children: Any = None  # orphans.ChildRegistry, set when the worker opens

    # -- one delivery -------------------------------------------------------------------
    def process(self, delivery: Any, take_next: Callable[[], Any] | None = None) -> Any:
        """Run one delivery.  take_next: called once the outcome is handed over, for the next
        delivery this thread runs in the same slot (None: the slot is free); returned."""
        run = Run(delivery)
        started = False
        try:
            if self._ready_to_run(run):
                started = True
                self.table.started()
                self._execute(run)
        except BaseException:
            self.table.done(started, detached=run.detached)
            raise
        following = take_next() if take_next is not None and not run.detached else None
        self.table.done(started, detached=run.detached, replaced=following is not None)
        return following

    # -- running ------------------------------------------------------------------------
    def _execute(self, run: Run) -> None:
        job, handler, cfg = run.job, run.handler, self.cfg
        timeout = cfg.timeout_of(job)
        ctx = run.ctx = HandlerContext(job, worker_id=cfg.worker_id, work_dir=self.work_dir,
                                       metrics=self.metrics, progress_sink=self.transport.append_progress,
                                       deadline=self.clock() + timeout, allowed_paths=cfg.allow_paths,
                                       protected_paths=self.transport.protected_paths, children=self.children,
                                       clock=self.clock)
        if run.stop_reason is not None:
            ctx.cancel(run.stop_reason)
        try:
            self.transport.mark_started(run.delivery)
        except (TransportUnavailable, OSError) as exc:  # not started: give it back, or leave it for reclaim
            log.warning("job %s: cannot mark it started (%s); giving it back", job.job_id, exc)
            self.table.remove(run)  # off the table: the lease keeper must not renew it forever
            self._release_key(run)
            try:
                self.transport.release(run.delivery)
            except (TransportUnavailable, OSError) as again:
                log.warning("job %s: cannot give it back either (%s); recovery takes it over",
                            job.job_id, again)
            run.to(JobState.PENDING)
            self.on_backoff()
            return
        run.to(JobState.RUNNING)
        run.thread = threading.current_thread().name
        run.started_mono, run.started_at = time.monotonic(), time.time()
        self.metrics.handler_started(time.time() - max(job.created_at.timestamp(), run.delivery.delivered_at))
        self.on_start(ctx.deadline)
        log.info("job %s: running %s (attempt %d/%d, timeout %ss)", job.job_id, job.operation,
                 job.attempt, job.max_attempts, timeout)
        outcome = None
        try:
            res = handler.execute(ctx, job.data)
            outcome = ("completed", res, None)
        except JobCancelled as err:
            outcome = (ctx.cancel_reason or err.reason, None, err)
        except HandlerError as err:
            outcome = (ctx.cancel_reason or "failed", None, err)
        except JobValidationError as err:  # a handler's re-check, e.g. the image vanished since admission
            outcome = (ctx.cancel_reason or "failed", None,
                       HandlerError(err.code, str(err), phase="execution",
                                    details={"field": err.field} if err.field else None))
        except Exception as err:
            log.exception("job %s: handler %s raised", job.job_id, handler.name)
            outcome = (ctx.cancel_reason or "failed", None,
                       HandlerError("HANDLER_ERROR", f"{type(err).__name__}: {err}", phase="execution"))
        finally:
            try:
                handler.cleanup(ctx)
            except Exception:
                log.exception("job %s: cleanup of %s failed", job.job_id, handler.name)
            duration = time.monotonic() - run.started_mono
            hstatus = {"completed": "success", "timeout": "timeout"}.get(outcome[0] if outcome else "",
                                                                          "error")
            self.metrics.handler_returned(handler.name, hstatus, duration)
            self.table.remove(run)
        if not run.finalize():
            log.warning("job %s: handler returned %.1fs after it was stopped; its outcome was already "
                        "written and this late outcome (%s) is discarded", job.job_id,
                        self.clock() - run.stop_at if run.stop_at is not None else duration, outcome[0])
            return
        status, res, err = outcome
        self.conclude(run, status, res, err)

    def stop(self, run: Run, reason: str) -> None:
        """Ask a running job to stop (timeout, requested, shutdown, lease_lost): cancel its
        context and kill its processes, in a thread of its own (a kill may wait)."""
        with run.lock:
            if run.stop_at is not None or run.finalized:
                return
            run.stop_reason, run.stop_at = reason, self.clock()
            if run.ctx is None:  # not started yet: _execute cancels it as soon as it has a context
                return
        if reason == "timeout":
            log.warning("job %s: timeout after %ss; cancelling and killing its processes", run.job_id,
                        self.cfg.timeout_of(run.job))
        else:
            log.warning("job %s: stopping it (%s)", run.job_id, reason)
        threading.Thread(target=run.ctx.cancel, args=(reason,), name=f"kill-{run.job_id}",
                         daemon=True).start()

    def cancel_now(self, runs: list) -> int:
        """Stop these runs at once (a second signal): processes SIGKILLed, ``cancelled`` results
        handed over, jobs given back; a handler returning later is discarded.  How many."""
        mine = [run for run in runs if run.ctx is not None and run.finalize()]
        for run in mine:
            for pid in run.ctx.child_pids:
                kill_tree_now(pid)
            threading.Thread(target=run.ctx.cancel, args=("shutdown",), daemon=True).start()
        for run in mine:
            try:
                self.conclude(run, "shutdown")
            except Exception:
                log.exception("job %s: cannot return it to the queue; the next start recovers it", run.job_id)
        return len(mine)

    def abandon(self, run: Run) -> None:
        """Write the outcome of a handler that ignores cancellation; its thread stays busy."""
        if not run.finalize():
            return
        reason = run.stop_reason or "shutdown"
        log.warning("job %s: handler thread %s ignores cancellation; writing its outcome now, the thread "
                    "stays counted as busy until it returns", run.job_id, run.thread)
        run.detached = True
        self.conclude(run, reason, None, None)
        self.table.detach()  # after the outcome is handed over: a one-shot run waits for it

    # -- outcome ------------------------------------------------------------------------
    def conclude(self, run: Run, status: str, res: Any = None, err: Any = None) -> None:
        """Decide and hand over the outcome of a run that started (status: completed, failed
        or a stop reason)."""
        job, reason_of_stop = run.job, None
        if status in _STOP_STATUS:
            reason_of_stop, status = status, _STOP_STATUS[status]
            if status is None:  # the lease went to another worker: that worker owns the job now
                log.warning("job %s: lease lost; outcome dropped, the job belongs to another worker",
                            job.job_id)
                return
        outcome = None
        if status == "completed":
            try:
                result = self._result(run, "completed", data=res.data,
                                      outputs={"primary": res.output, "artifacts": list(res.artifacts or [])})
                outcome = Outcome(run.delivery, "completed", result=result,
                                  encoded=self.transport.encode_result(result))
                run.to(JobState.COMPLETED)
            except (TypeError, ValueError, AttributeError) as exc:  # serialising happens before any write
                status, err = "failed", HandlerError("INVALID_RESULT", f"handler returned a result that "
                                                     f"cannot be stored as JSON: {exc}", phase="export")
        if outcome is None:
            if status == "failed" and err is not None and err.recoverable and job.attempt < job.max_attempts:
                self._retry(run, err)
                return
            error = docs.execution_error(status, err, timeout=self.cfg.timeout_of(job),
                                         on_request=reason_of_stop == "requested")
            result = self._result(run, status, error=error)
            run.to({"failed": JobState.FAILED, "timeout": JobState.TIMEOUT,
                    "cancelled": JobState.CANCELLED}[status])
            requeue = reason_of_stop in _REQUEUED
            reason = None if requeue else docs.reason_document(run.delivery.name, job.job_id, status,
                                                               self.cfg.worker_id, error)
            outcome = Outcome(run.delivery, status, result=result, reason=reason, failed=not requeue,
                              release=requeue)
        self._send_to_committer(run, outcome)

    def _retry(self, run: Run, err: Any) -> None:
        job = run.job
        doc = dict(job.doc)
        doc["execution"] = dict(doc.get("execution") or {}, attempt=job.attempt + 1)
        run.to(JobState.FAILED)
        if not self.transport.extend_lease(run.delivery):  # taken over: the job is another's now
            self._drop_lost(run, "its retry")
            return
        self._release_key(run)
        try:
            self.transport.retry(run.delivery, doc)
        except LeaseLost:
            self._drop_lost(run, "its retry")
            return
        except OSError as exc:
            # e.g. ENOSPC writing the new attempt: give the job back unchanged (this attempt runs
            # again after the back-off) rather than leave it held and unfinished
            log.error("job %s: attempt %d/%d failed (%s) and cannot be re-queued as attempt %d (%s); job "
                      "returned to the queue as it was", job.job_id, job.attempt, job.max_attempts, err,
                      job.attempt + 1, exc)
            self.on_backoff()
            self.give_back(run)
            return
        log.warning("job %s: attempt %d/%d failed (%s); re-queued as attempt %d", job.job_id, job.attempt,
                    job.max_attempts, err, job.attempt + 1)

    def _send_to_committer(self, run: Run, outcome: Outcome) -> None:
        """Queue ``outcome`` for the committer, which stores a batch of them in one commit."""
        if run.key_held:
            outcome.idempotency_key = run.job.idempotency_key
        if self.cfg.max_concurrent > 1 and outcome.result is not None and not outcome.release:
            # job threads store their own results, so their disk waits overlap; the committer
            # then makes a whole batch durable at once
            try:
                self.transport.stage_result(outcome)
            except OSError as exc:  # the committer writes it again, and again after pauses
                outcome.error = exc
                self.store_error(run, outcome)
                outcome.error = None
        self.store(run, outcome)

    def _release_key(self, run: Run) -> None:
        if run.key_held:
            run.key_held = False
            try:
                self.transport.release_idempotency_key(run.job.idempotency_key, run.job.job_id)
            except OSError as exc:
                log.error("job %s: cannot release idempotency key: %s", run.job_id, exc)

    def _drop_lost(self, run: Run, what: str) -> None:
        """Another worker took this delivery over: drop ``what`` and touch nothing of the job
        (its idempotency key and its queue entry belong to the new owner)."""
        run.key_held = False
        log.warning("job %s: another worker took the job over; %s is dropped", run.job_id, what,
                    extra={"event": "lease_lost"})
        # the transport lets go of what it held for the delivery (its job id's lock, say); fenced
        # or already gone, nothing of the job is this worker's any more
        with contextlib.suppress(LeaseLost, OSError):
            self.transport.release(run.delivery)

    def give_back(self, run: Run) -> None:
        try:
            self.transport.release(run.delivery)
        except OSError as exc:
            log.error("job %s: cannot return %s to the queue (%s); it stays held for recovery",
                      run.job_id, run.delivery.name, exc)

    # -- after the committer ------------------------------------------------------------
    def stored(self, run: Run, outcome: Outcome) -> None:
        """Count and log an outcome once it is stored."""
        self.metrics.job_finished(run.operation_label, outcome.status, time.monotonic() - run.started_mono)
        self.table.count(outcome.status)
        log.info("job %s: %s", run.job_id, outcome.status, extra={"event": f"job_{outcome.status}"})

    def store_error(self, run: Run, outcome: Outcome) -> None:
        """One failed try to store an outcome: counted, and no new job is taken for a while."""
        log.error("job %s: cannot store the outcome (%s); trying again after a pause, without running it "
                  "again", run.job_id, outcome.error)
        self.metrics.result_write_failed()
        self.on_backoff()

    def store_failed(self, run: Run, outcome: Outcome) -> None:
        """The outcome could not be stored after all its tries: the job goes back to the queue
        (it runs again later; nothing is lost).  An outcome refused because another worker took
        the job over is dropped instead: the key and the job are that worker's now."""
        if isinstance(outcome.error, LeaseLost):
            self._drop_lost(run, "its outcome")
            return
        log.error("job %s: giving up storing the outcome (%s); job returned to the queue", run.job_id,
                  outcome.error)
        self.table.count("unstored")  # a one-shot run that leaves a job undone does not exit 0
        self._release_key(run)
        self.give_back(run)

    def _result(self, run: Run, status: str, **kw: Any) -> dict:
        job = run.job
        return docs.result_document(job_id=job.job_id if job else run.delivery.job_id, status=status,
                                    worker_id=self.cfg.worker_id, job=job, started_at=run.started_at,
                                    duration=time.monotonic() - run.started_mono, **kw)
