"""The worker: a scanner loop feeding job threads of a ThreadPoolExecutor, a watchdog that
enforces per-job timeouts, and a shutdown that drains, then cancels, and loses nothing.

Threads:
* the main thread runs :meth:`Worker.run`: polls the transport, keeps the queue depth and
  the heartbeat, recovers jobs of dead workers, and on stop drains the pool;
* ``--max-concurrent`` job threads (a ThreadPoolExecutor) loop on ``queue.get(timeout=...)``:
  each claims one job, validates it, runs its handler and stores the result, so the worker
  never holds more claimed jobs than it has free threads;
* the watchdog cancels a job at its deadline (context event + kill of its process groups) and,
  when a handler ignores that, writes the ``timeout`` result itself; the thread stays counted
  as busy until it really returns;
* the committer finishes storing outcomes: a job thread writes and fsyncs its result file,
  then hands the job over; the committer makes every result handed over so far durable with
  one fsync of the results directory (group commit) and only then moves each job file to
  done/ or failed/.  The job thread takes its next job meanwhile.  With a single job thread
  (``--max-concurrent 1``) the committer writes the result file as well, so that the one job
  thread's next job overlaps all of the previous one's disk waits; with more, job threads
  write their own results and their fsyncs overlap each other.  Until its outcome is
  stored a job stays ``.running`` in the processing dir, so a crash in between is recovered
  like a crash during its handler (at most COMMIT_BACKLOG_PER_THREAD x --max-concurrent
  jobs wait for the committer).
"""

import logging
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from prometheus_client import REGISTRY

from . import __version__
from .context import HandlerContext
from .errors import HandlerError, JobCancelled, JobValidationError
from .handlers import default_registry
from .metrics import NullMetrics, WorkerMetrics
from .orphans import ChildRegistry
from .procs import KILL_GRACE_SECONDS, kill_tree_now
from .protocol import DEFAULT_MAX_JOB_BYTES, decode_job_bytes, peek_job_id, pool_accepts, validate_document
from .state import JobState, check_transition
from .tempfiles import TEMP_SWEEP_INTERVAL_SECONDS, sweep_temp_files
from .transport import FileTransport

log = logging.getLogger(__name__)

#: After a timeout, how long a handler may take to return before the watchdog writes the result.
ABANDON_GRACE_SECONDS = KILL_GRACE_SECONDS + 2.0
#: How often jobs of dead workers sharing the jobs directory are looked for.
RECOVERY_INTERVAL_SECONDS = 30.0
#: How long a job meant for another pool is not looked at again.
FOREIGN_RECHECK_SECONDS = 60.0
#: Outcomes waiting for the committer, per job thread, before job threads wait for it.
COMMIT_BACKLOG_PER_THREAD = 4


class _Commit:
    """An outcome handed to the committer."""

    __slots__ = ("run", "result", "encoded", "reason", "failed", "status", "error")

    def __init__(self, run, result, encoded, reason, failed, status):
        self.run, self.result, self.encoded, self.reason = run, result, encoded, reason
        self.failed, self.status = failed, status  # encoded: bytes still to write, or None
        self.error = None


def default_worker_id():
    return f"{socket.gethostname().split('.')[0]}-{uuid.uuid4().hex[:6]}"


def utcnow():
    return datetime.now(timezone.utc)


_second = (None, "")  # (whole second, its formatted prefix), replaced as one tuple


def stamp(t=None):
    """RFC 3339 UTC time stamp with microseconds of time.time() (or t), e.g.
    2026-11-28T10:10:30.342027Z; the date part is formatted once per second."""
    global _second
    t = time.time() if t is None else t
    sec = int(t)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{int((t - sec) * 1e6):06d}Z"


def iso(dt):
    return dt.isoformat().replace("+00:00", "Z")


@dataclass
class WorkerConfig:
    """Everything the worker needs; the CLI fills it from flags and environment."""

    jobs_dir: str = "jobs"
    results_dir: str = "results"
    work_dir: str = "work"
    worker_id: str = field(default_factory=default_worker_id)
    pool: str = "default"
    max_concurrent: int = 4
    poll_interval: float = 1.0
    shutdown_timeout: float = 30.0
    max_job_timeout: float = None
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES
    allow_paths: list = None
    once: bool = False
    metrics_enabled: bool = True
    durable: bool = True


class _Run:
    """One job from claim to result."""

    __slots__ = ("claim", "job", "handler", "ctx", "state", "started_mono", "started_at", "lock",
                 "finalized", "timeout_at", "operation_label", "thread")

    def __init__(self, claim):
        self.claim = claim
        self.job = self.handler = self.ctx = None
        self.state = JobState.ASSIGNED
        self.started_mono = time.monotonic()
        self.started_at = time.time()
        self.lock = threading.Lock()
        self.finalized = False
        self.timeout_at = None
        self.operation_label = "unknown"
        self.thread = None

    def to(self, new):
        self.state = check_transition(self.state, new)

    @property
    def job_id(self):
        return self.job.job_id if self.job else (self.claim.job_id or self.claim.name)


class Worker:
    def __init__(self, config, *, handlers=None, metrics=None, registry=REGISTRY, transport=None):
        self.cfg = config
        self.handlers = handlers if handlers is not None else default_registry()
        if metrics is None:
            metrics = (WorkerMetrics(operations=self.handlers.operations,
                                     handlers=[h.name for h in self.handlers.handlers],
                                     worker_id=config.worker_id, pool=config.pool, version=__version__,
                                     max_concurrent=config.max_concurrent, registry=registry,
                                     track_last_success=not config.once)
                       if config.metrics_enabled else NullMetrics())
        self.metrics = metrics
        self.transport = transport or FileTransport(config.jobs_dir, config.results_dir, config.worker_id,
                                                    max_job_bytes=config.max_job_bytes, durable=config.durable)
        self.work_dir = os.path.abspath(config.work_dir)
        self._stop = threading.Event()        # stop claiming new jobs
        self._wake = threading.Event()        # wake the main loop early
        self._names = queue.Queue()
        self._queued = set()                  # names handed to job threads, not yet done with
        self._foreign = {}                    # name -> time it was found to belong elsewhere
        self._lock = threading.Lock()
        self._runs = {}                       # job_id -> _Run, handler running
        if hasattr(self.metrics, "track_active"):
            self.metrics.track_active(self._runs.__len__)  # until its thread returns, not its timeout
        if hasattr(self.metrics, "track_health"):
            self.metrics.track_health(lambda: {name: c["ok"] for name, c in self.health()[1]["checks"].items()})
            self.metrics.track_running(self._running_starts)
        self._claimed_not_started = 0
        self._outcomes = {}
        self._depth = 0
        self._heartbeat = time.monotonic()
        self._started_mono = time.monotonic()
        self._backoff_until = 0.0
        self._pool = None
        self._watchdog = None
        self._watchdog_wake = threading.Event()
        self._watchdog_due = 0.0              # when the watchdog looks next (0: it is looking now)
        self._watchdog_stop = threading.Event()
        self._commits = queue.Queue(maxsize=max(8, COMMIT_BACKLOG_PER_THREAD * config.max_concurrent))
        self._committer = None
        self._commit_closed = False           # from now on outcomes are stored by their own thread
        self._pending_commits = 0             # outcomes handed to the committer, not yet stored
        self.hard_stop = False                # set by a second signal

    # -- public -------------------------------------------------------------------------
    def request_stop(self):
        """Stop claiming and drain (safe to call from a signal handler: only sets flags)."""
        self._stop_requested = True

    _stop_requested = False

    def cancel_all_now(self):
        """A second signal: stop every running job at once, without the shutdown timeout.

        Each job's processes are SIGKILLed (whole trees), its ``cancelled`` result is written
        and its job file goes back to the queue, right here; a handler returning later is
        discarded.  Returns the number of jobs cancelled.  Jobs claimed but not started stay
        claimed and are given back by the next start's recovery (no attempt is used up).
        """
        self.hard_stop = True
        self._stop.set()
        with self._lock:
            runs = list(self._runs.values())
        mine = []
        for run in runs:
            with run.lock:
                if run.finalized:
                    continue
                run.finalized = True
            mine.append(run)
        for run in mine:
            for pid in run.ctx.child_pids:
                kill_tree_now(pid)
            threading.Thread(target=run.ctx.cancel, args=("shutdown",), daemon=True).start()
        for run in mine:
            try:
                self._conclude(run, "cancelled")
            except Exception:
                log.exception("job %s: cannot return it to the queue; the next start recovers it", run.job_id)
        return len(mine)

    @property
    def outcomes(self):
        with self._lock:
            return dict(self._outcomes)

    def exit_status(self):
        """0 when every job ended completed or duplicate, else 1."""
        bad = {k: v for k, v in self.outcomes.items() if k not in ("completed", "duplicate")}
        return 1 if any(bad.values()) else 0

    def open(self):
        """Create directories, take the liveness lock, remove stale temp files, recover jobs of
        dead workers."""
        os.makedirs(self.work_dir, exist_ok=True)
        self.transport.open()
        # processes left by workers that were killed (their children's children) go first
        self._children_registry = ChildRegistry(os.path.join(self.work_dir, ".children"), self.cfg.worker_id)
        self._children_registry.reap_dead_workers()
        # handlers check a job's paths against --allow-path while validating it: a refused
        # path rejects the job before anything looks at the file system
        self.handlers.configure_paths(self.cfg.allow_paths, self.transport.own_dirs)
        self._sweep_temp_files()
        n = self.transport.recover(self._recover_one)
        if n:
            log.warning("recovered %d job(s) left by dead workers", n)
        self._last_recovery = time.monotonic()

    _sweeper = None
    _children_registry = None
    #: called once run() has started the worker's own threads
    on_running = None

    def _sweep_temp_files(self, background=False):
        """Remove atomic-write temp files that killed workers left in the shared directories
        (see guestkit_worker.tempfiles); a daemon does it again every
        TEMP_SWEEP_INTERVAL_SECONDS in a thread of its own, never blocking the main loop."""
        self._last_sweep = time.monotonic()
        t = self.transport
        dirs = [d for d in (getattr(t, "jobs_dir", None), getattr(t, "failed_dir", None),
                            getattr(t, "results_dir", None), getattr(t, "idem_dir", None)) if d]
        if not background:
            sweep_temp_files(dirs)
        elif self._sweeper is None or not self._sweeper.is_alive():
            self._sweeper = threading.Thread(target=sweep_temp_files, args=(dirs,), name="temp-sweep",
                                             daemon=True)
            self._sweeper.start()

    def run(self):
        """Run until stopped (daemon) or until the jobs present at start are done (--once)."""
        cfg = self.cfg
        self._committer = threading.Thread(target=self._commit_loop, name="committer", daemon=True)
        self._committer.start()
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrent, thread_name_prefix="job")
        for _ in range(cfg.max_concurrent):
            self._pool.submit(self._job_thread)
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        if self.on_running is not None:  # e.g. the HTTP port starts accepting only now
            self.on_running()
        log.info("worker %s (pool %s) serving %s from %s, %d at once%s", cfg.worker_id, cfg.pool,
                 ", ".join(self.handlers.operations), self.transport.jobs_dir, cfg.max_concurrent,
                 " (one-shot)" if cfg.once else "")
        if cfg.once:
            self._enqueue(self.transport.scan())
        try:
            while not self._stop_requested:
                self._heartbeat = time.monotonic()
                if cfg.once:
                    with self._lock:
                        idle = not self._queued and not self._pending_commits
                    if idle:
                        break
                    self._update_depth(self.transport.scan())
                else:
                    self._poll()
                self._wake.wait(min(cfg.poll_interval, 0.5))
                self._wake.clear()
        finally:
            self._shutdown()
        return self.exit_status()

    # -- main loop ----------------------------------------------------------------------
    def _poll(self):
        now = time.monotonic()
        if now - self._last_recovery > RECOVERY_INTERVAL_SECONDS:
            self._last_recovery = now
            try:
                self.transport.recover(self._recover_one)
            except Exception:  # e.g. a storage error: tried again next interval, the loop keeps going
                log.exception("recovering jobs of dead workers failed; trying again in %ss",
                              RECOVERY_INTERVAL_SECONDS)
        if now - self._last_sweep > TEMP_SWEEP_INTERVAL_SECONDS:
            self._sweep_temp_files(background=True)
        names = self.transport.scan()
        self._update_depth(names)
        if now < self._backoff_until:
            return
        self._enqueue(names)

    def _update_depth(self, names):
        with self._lock:
            waiting = sum(1 for n in names if n not in self._foreign)
            self._depth = waiting + self._claimed_not_started
        self.metrics.set_queue_depth(self._depth)

    def _enqueue(self, names):
        now = time.monotonic()
        with self._lock:
            for name in names:
                if name in self._queued:
                    continue
                seen = self._foreign.get(name)
                if seen is not None:
                    if now - seen < FOREIGN_RECHECK_SECONDS:
                        continue
                    del self._foreign[name]
                self._queued.add(name)
                self._names.put(name)

    # -- job threads --------------------------------------------------------------------
    def _job_thread(self):
        poll = min(self.cfg.poll_interval, 0.5)
        while not (self._stop.is_set() or self._stop_requested):
            try:
                name = self._names.get(timeout=poll)
            except queue.Empty:
                continue
            if name is None:  # shutdown sentinel
                break
            retry = False
            try:
                if not (self._stop.is_set() or self._stop_requested):
                    retry = self._process(name)
            except Exception:
                log.exception("job file %s: unexpected error; the worker keeps running", name)
            finally:
                with self._lock:
                    if retry:  # stays in _queued, so a one-shot run waits for it
                        self._names.put(name)
                    else:
                        self._queued.discard(name)
                    empty = not self._queued
            if empty or self._names.empty():
                self._wake.set()

    def _process(self, name):
        """Claim, validate and run one job file.  Returns True when it was re-queued for a retry."""
        claim = self.transport.claim(name)
        if claim is None:
            log.debug("job file %s: not claimed (gone, or a file of that name is still being processed here)", name)
            return False
        run = _Run(claim)
        with self._lock:
            self._claimed_not_started += 1
        started = False
        try:
            job = self._admit(run)
            if job is None:
                return False
            started = True
            with self._lock:
                self._claimed_not_started -= 1
            return self._execute(run)
        finally:
            if not started:
                with self._lock:
                    self._claimed_not_started -= 1

    def _admit(self, run):
        """Parse and check a claimed job; reject, release or mark duplicate.  The Job or None."""
        claim, cfg = run.claim, self.cfg
        doc = None
        try:
            doc = decode_job_bytes(self.transport.read(claim), cfg.max_job_bytes)
            claim.job_id = peek_job_id(doc)
            if not pool_accepts(doc, cfg.pool) or _pinned_elsewhere(doc, cfg.worker_id):
                log.info("job file %s: meant for another pool or worker; left in the queue", claim.name)
                self.transport.release(claim)
                with self._lock:
                    self._foreign[claim.name] = time.monotonic()
                run.to(JobState.PENDING)
                return None
            job = run.job = validate_document(doc)
        except JobValidationError as err:
            self._reject(run, err, doc)
            return None
        claim.attempt = job.attempt
        handler = self.handlers.get(job.operation)
        run.operation_label = self.metrics.label_operation(job.operation)
        try:
            if handler is None:
                raise JobValidationError("operation", f"no handler for operation {job.operation!r}; this worker "
                                         f"serves {', '.join(self.handlers.operations)}", code="HANDLER_NOT_FOUND")
            if job.payload_type not in handler.payload_types:
                raise JobValidationError("payload.type", f"{job.payload_type!r} is not accepted by "
                                         f"{job.operation} (accepts {', '.join(handler.payload_types)})",
                                         code="PAYLOAD_TYPE_MISMATCH")
            missing = [c for c in job.constraints.get("required_capabilities") or ()
                       if self.handlers.get(c) is None]
            if missing:
                raise JobValidationError("constraints.required_capabilities",
                                         f"this worker does not serve {', '.join(missing)}",
                                         code="CAPABILITY_MISMATCH")
            if job.expired():
                raise JobValidationError("execution.deadline", f"deadline {iso(job.deadline)} has passed; "
                                         "the job was not run", code="DEADLINE_EXCEEDED")
            if not isinstance(job.data, dict):
                raise JobValidationError("payload.data", "must be an object")
            with self._lock:
                busy = job.job_id in self._runs
            if busy:
                raise JobValidationError("job_id", f"a job with id {job.job_id} is already running",
                                         code="DUPLICATE_JOB_ID")
            handler.validate(job.data)
        except JobValidationError as err:
            if err.field and handler is not None and not err.field.startswith(
                    ("payload", "operation", "constraints", "execution", "job_id")):
                err = JobValidationError(f"payload.data.{err.field}", err.reason, code=err.code)
            self._reject(run, err, doc, write_result=err.code != "DUPLICATE_JOB_ID")
            return None
        except HandlerError as err:  # e.g. PATH_NOT_ALLOWED found while validating
            self._reject(run, err, doc)
            return None
        run.handler = handler
        if job.idempotency_key and self._duplicate(run):
            return None
        return job

    def _duplicate(self, run):
        job = run.job
        rec = self.transport.idempotency_lookup(job.idempotency_key)
        if rec is None:
            return False
        earlier = self.transport.read_result(rec["job_id"])
        if not earlier or earlier.get("status") != "completed":
            return False
        log.info("job %s: idempotency key %s already completed by job %s; not run again",
                 job.job_id, job.idempotency_key, rec["job_id"])
        result = None
        if rec["job_id"] != job.job_id:  # never overwrite the earlier result itself
            result = self._result_doc(run, "completed", data=earlier.get("data"),
                                      outputs=earlier.get("outputs"))
            result["duplicate_of"] = {"job_id": rec["job_id"], "result": rec["result"],
                                      "completed_at": rec.get("completed_at")}
        run.to(JobState.COMPLETED)
        self._store(run, result, None, failed=False, status="duplicate")
        return True

    def _reject(self, run, err, doc, write_result=True):
        claim = run.claim
        job_id = run.job.job_id if run.job else claim.job_id
        code = getattr(err, "code", "INVALID_JOB")
        log.warning("job %s: rejected (%s) %s", job_id or claim.name, code, err)
        error = {"code": code, "message": str(err), "phase": "validation", "recoverable": False,
                 "retry_recommended": False}
        if getattr(err, "field", None):
            error["details"] = {"field": err.field}
            if len(getattr(err, "problems", ())) > 1:
                error["details"]["problems"] = [str(p) for p in err.problems]
        result = self._result_doc(run, "failed", error=error) if (job_id and write_result) else None
        reason = {"job_file": claim.name, "job_id": job_id, "status": "rejected", "worker_id": self.cfg.worker_id,
                  "at": iso(utcnow()), "error": error}
        if run.job is None and isinstance(doc, dict) and isinstance(doc.get("operation"), str):
            run.operation_label = self.metrics.label_operation(doc["operation"])
        run.to(JobState.FAILED)
        self._store(run, result, reason, failed=True, status="rejected")

    # -- execution ----------------------------------------------------------------------
    def _execute(self, run):
        job, handler, cfg = run.job, run.handler, self.cfg
        timeout = job.timeout_seconds
        if cfg.max_job_timeout:
            timeout = min(timeout, cfg.max_job_timeout)
        ctx = run.ctx = HandlerContext(job, worker_id=cfg.worker_id, work_dir=self.work_dir, metrics=self.metrics,
                                       progress_path=self.transport.progress_path(job.job_id),
                                       deadline=time.monotonic() + timeout, allowed_paths=cfg.allow_paths,
                                       protected_paths=self.transport.own_dirs, children=self._children_registry)
        self.transport.mark_started(run.claim)
        run.to(JobState.RUNNING)
        run.thread = threading.current_thread().name
        run.started_mono, run.started_at = time.monotonic(), time.time()
        waited_since = max(job.created_at.timestamp(), run.claim.claimed_at)
        self.metrics.handler_started(time.time() - waited_since)
        with self._lock:
            self._runs[job.job_id] = run
        if ctx.deadline < self._watchdog_due or not self._watchdog_due:
            self._watchdog_wake.set()  # only when this deadline comes before the watchdog's next look
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
            hstatus = {"completed": "success", "timeout": "timeout"}.get(outcome[0] if outcome else "", "error")
            self.metrics.handler_returned(handler.name, hstatus, duration)
            with self._lock:
                self._runs.pop(job.job_id, None)
        with run.lock:
            if run.finalized:
                log.warning("job %s: handler returned %.1fs after its timeout; its result was already written "
                            "and this late outcome (%s) is discarded", job.job_id,
                            time.monotonic() - run.timeout_at, outcome[0])
                return False
            run.finalized = True
        status, res, err = outcome
        if status == "shutdown":
            status = "cancelled"
        return self._conclude(run, status, res, err)

    def _conclude(self, run, status, res=None, err=None):
        """Write the result of a run that started; retry or requeue when that is the policy."""
        job = run.job
        if status == "completed":
            try:
                result = self._result_doc(run, "completed", data=res.data,
                                          outputs={"primary": res.output, "artifacts": list(res.artifacts or [])})
                run.to(JobState.COMPLETED)
                self._store(run, result, None, failed=False, status="completed")
                return False
            except (TypeError, ValueError, AttributeError) as exc:  # serialising happens before any write
                run.state = JobState.RUNNING
                status, err = "failed", HandlerError("INVALID_RESULT", f"handler returned a result that cannot "
                                                     f"be stored as JSON: {exc}", phase="export")
        if status != "completed":
            if status == "failed" and err is not None and err.recoverable and job.attempt < job.max_attempts:
                return self._retry(run, err)
            error = {"code": getattr(err, "code", "HANDLER_ERROR"), "message": getattr(err, "message", str(err)),
                     "phase": getattr(err, "phase", None) or "execution",
                     "recoverable": bool(getattr(err, "recoverable", False)),
                     "retry_recommended": status in ("cancelled",) or bool(getattr(err, "recoverable", False))}
            if status == "timeout":
                error.update(code="TIMEOUT", message=f"job exceeded its timeout of {self._timeout(job)}s; "
                             "its processes were killed")
            elif status == "cancelled":
                error.update(code="CANCELLED", message="worker shut down before the job finished; "
                             "the job file was returned to the queue")
            if getattr(err, "details", None):
                error["details"] = err.details
            result = self._result_doc(run, status, error=error)
        run.to({"failed": JobState.FAILED, "timeout": JobState.TIMEOUT, "cancelled": JobState.CANCELLED}[status])
        if status == "cancelled":
            self._store(run, result, None, failed=False, status=status, requeue=True)
            return False
        reason = {
            "job_file": run.claim.name, "job_id": job.job_id, "status": status, "worker_id": self.cfg.worker_id,
            "at": iso(utcnow()), "error": result["error"]}
        self._store(run, result, reason, failed=True, status=status)
        return False

    def _timeout(self, job):
        t = job.timeout_seconds
        return min(t, self.cfg.max_job_timeout) if self.cfg.max_job_timeout else t

    def _retry(self, run, err):
        job = run.job
        doc = dict(job.doc)
        doc["execution"] = dict(doc.get("execution") or {}, attempt=job.attempt + 1)
        run.to(JobState.FAILED)
        try:
            self.transport.requeue(run.claim, doc)
        except OSError as exc:
            # e.g. ENOSPC writing the new attempt: give the job file back unchanged (this attempt
            # runs again after the back-off) rather than leave it claimed and unfinished
            log.error("job %s: attempt %d/%d failed (%s) and cannot be re-queued as attempt %d (%s); job file "
                      "returned to the queue as it was", job.job_id, job.attempt, job.max_attempts, err,
                      job.attempt + 1, exc)
            self._backoff_until = time.monotonic() + max(1.0, 5 * self.cfg.poll_interval)
            try:
                self.transport.release(run.claim)
            except OSError as exc2:
                log.error("job %s: cannot return %s to the queue (%s); it stays in %s for recovery",
                          job.job_id, run.claim.name, exc2, run.claim.path)
            return False
        log.warning("job %s: attempt %d/%d failed (%s); re-queued as attempt %d", job.job_id, job.attempt,
                    job.max_attempts, err, job.attempt + 1)
        return True

    def _store(self, run, result, reason, *, failed, status, requeue=False):
        """Persist the outcome: through the committer while it runs, else right here."""
        if not requeue and self._committer is not None and not self._commit_closed:
            encoded = None
            if result is not None:
                # serialised first, so a result that cannot be stored fails in the caller
                encoded = self.transport.encode_result(result)
                if self.cfg.max_concurrent > 1:
                    try:
                        self.transport.write_result(result, sync=False, encoded=encoded)
                    except OSError as exc:
                        self._store_failed(run, exc)
                        return
                    encoded = None
            with self._lock:
                queued = not self._commit_closed
                if queued:
                    self._pending_commits += 1
            if queued:
                self._commits.put(_Commit(run, result, encoded, reason, failed, status))
                return
            # closed meanwhile (shutdown): finished right here, the result written once more
        try:
            if requeue:
                if result is not None:
                    self.transport.write_result(result)
                self.transport.requeue(run.claim)
            else:
                if result is not None:
                    self.transport.write_result(result)
                self._remember_key(run, result, status)
                self.transport.finish(run.claim, reason, failed=failed)
        except OSError as exc:
            self._store_failed(run, exc)
            return
        self._stored(run, result, status)

    # -- committer ----------------------------------------------------------------------
    def _commit_loop(self):
        """Store handed-over outcomes in batches until closed and nothing is pending."""
        limit = self._commits.maxsize
        while True:
            try:
                batch = [self._commits.get(timeout=0.5)]
            except queue.Empty:
                batch = []
            while batch and len(batch) < limit:
                try:
                    batch.append(self._commits.get_nowait())
                except queue.Empty:
                    break
            batch = [c for c in batch if c is not None]  # None: a wake-up at shutdown
            if batch:
                try:
                    self._commit(batch)
                except Exception:  # the committer must not die; unstored jobs stay for recovery
                    log.exception("storing %d outcome(s) failed unexpectedly", len(batch))
            with self._lock:
                self._pending_commits -= len(batch)
                done = self._commit_closed and self._pending_commits == 0
                idle = not self._queued and self._pending_commits == 0
            if done:
                return
            if batch and idle:
                self._wake.set()  # a one-shot run may end

    def _commit(self, batch):
        """Write the results not written yet (each fsynced), one fsync of the results dir for
        the whole batch, then archive each job."""
        for c in batch:
            if c.encoded is not None:
                try:
                    self.transport.write_result(c.result, sync=False, encoded=c.encoded)
                except OSError as exc:
                    c.error = exc
        if any(c.result is not None and c.error is None for c in batch):
            try:
                self.transport.sync_results()
            except OSError as exc:
                for c in batch:
                    if c.result is not None and c.error is None:
                        c.error = exc
        for c in batch:
            try:
                if c.error is None:
                    self._remember_key(c.run, c.result, c.status)
                    try:
                        self.transport.finish(c.run.claim, c.reason, failed=c.failed)
                    except OSError as exc:
                        c.error = exc
                if c.error is None:
                    self._stored(c.run, c.result, c.status)
                else:
                    self._store_failed(c.run, c.error)
            except Exception:  # one job's trouble must not leave the rest of the batch unstored
                log.exception("job %s: storing the outcome failed unexpectedly; the job file stays in %s "
                              "for recovery", c.run.job_id, c.run.claim.path)

    def _store_failed(self, run, exc):
        """A storage error: put the job back and back off (nothing lost)."""
        claim, job_id = run.claim, run.job_id
        log.error("job %s: cannot store the outcome (%s); job file returned to the queue", job_id, exc)
        self.metrics.result_write_failed()
        with self._lock:  # a one-shot run that leaves a job undone does not exit 0
            self._outcomes["unstored"] = self._outcomes.get("unstored", 0) + 1
        self._backoff_until = time.monotonic() + max(1.0, 5 * self.cfg.poll_interval)
        try:
            self.transport.release(claim)
        except OSError as exc2:
            log.error("job %s: cannot return %s to the queue (%s); it stays in %s for recovery",
                      job_id, claim.name, exc2, claim.path)

    def _remember_key(self, run, result, status):
        """Record a completed job's idempotency key once its result is durable and before the
        job file is archived: a crash in between finds the key on recovery (run again as a
        duplicate of itself, result kept) instead of a done job whose key was never kept."""
        if status == "completed" and run.job is not None and run.job.idempotency_key:
            try:
                self.transport.idempotency_store(run.job.idempotency_key, run.job.job_id, result.get("completed_at"))
            except OSError as exc:
                log.error("job %s: cannot record idempotency key: %s", run.job_id, exc)

    def _stored(self, run, result, status):
        """Count and log an outcome once its job file is archived."""
        job_id = run.job_id
        self.metrics.job_finished(run.operation_label, status, time.monotonic() - run.started_mono)
        with self._lock:
            self._outcomes[status] = self._outcomes.get(status, 0) + 1
        log.info("job %s: %s", job_id, status, extra={"event": f"job_{status}"})

    def _result_doc(self, run, status, *, data=None, outputs=None, error=None):
        job = run.job
        doc = {"job_id": job.job_id if job else run.claim.job_id, "status": status,
               ("completed_at" if status == "completed" else "failed_at"): stamp(),
               "worker_id": self.cfg.worker_id,
               "operation": job.operation if job else None,
               "execution_summary": {
                   "started_at": stamp(run.started_at),
                   "duration_seconds": round(time.monotonic() - run.started_mono, 6),
                   "attempt": job.attempt if job else 1,
                   "idempotency_key": job.idempotency_key if job else None},
               "outputs": outputs or {"primary": None, "artifacts": []},
               "error": error,
               "observability": job.observability if job else None,
               "data": data}
        return doc

    # -- timeouts -----------------------------------------------------------------------
    def _watch(self):
        while not self._watchdog_stop.is_set():
            self._watchdog_due = 0.0  # runs added from now on wake us
            now = time.monotonic()
            nearest = now + 1.0
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                ctx = run.ctx
                if run.timeout_at is None:
                    if ctx.deadline is not None and now >= ctx.deadline:
                        run.timeout_at = now
                        log.warning("job %s: timeout after %ss; cancelling and killing its processes",
                                    run.job_id, self._timeout(run.job))
                        threading.Thread(target=ctx.cancel, args=("timeout",), name=f"kill-{run.job_id}",
                                         daemon=True).start()
                    elif ctx.deadline is not None:
                        nearest = min(nearest, ctx.deadline)
                elif now >= run.timeout_at + ABANDON_GRACE_SECONDS:
                    self._abandon(run, "timeout")
                else:
                    nearest = min(nearest, run.timeout_at + ABANDON_GRACE_SECONDS)
            self._watchdog_due = nearest
            self._watchdog_wake.wait(max(0.01, nearest - time.monotonic()))
            self._watchdog_wake.clear()

    def _abandon(self, run, status):
        """Write the outcome of a handler that ignores cancellation; its thread stays busy."""
        with run.lock:
            if run.finalized:
                return
            run.finalized = True
        log.warning("job %s: handler thread %s ignores cancellation; writing the %s result now, the thread "
                    "stays counted as busy until it returns", run.job_id, run.thread, status)
        self._conclude(run, status)
        with self._lock:  # the job is done with, even if its thread is not: a one-shot run may end
            self._queued.discard(run.claim.name)
        self._wake.set()

    # -- recovery -----------------------------------------------------------------------
    def _recover_one(self, claim, dead_worker):
        """Recover one claim; whatever goes wrong with it fails that claim alone, never the
        start-up or the other claims."""
        try:
            self._recover_claim(claim, dead_worker)
        except Exception as exc:
            log.exception("job file %s: recovering it from worker %s failed; moving it to failed/",
                          claim.name, dead_worker)
            error = {"code": "RECOVERY_FAILED", "message": f"recovering the job left by worker {dead_worker} "
                     f"failed: {type(exc).__name__}: {exc}", "phase": "recovery", "recoverable": False,
                     "retry_recommended": False}
            try:
                self.transport.finish(claim, {"job_file": claim.name, "job_id": claim.job_id, "status": "failed",
                                              "worker_id": self.cfg.worker_id, "at": iso(utcnow()),
                                              "error": error}, failed=True)
            except Exception:
                log.exception("job file %s: cannot move it to failed/ either; it stays in %s", claim.name,
                              claim.path)

    def _recover_claim(self, claim, dead_worker):
        """Dispose of a job a dead worker had claimed: finish, re-queue, or fail it."""
        run = _Run(claim)
        try:
            doc = decode_job_bytes(self.transport.read(claim), self.cfg.max_job_bytes)
            job = validate_document(doc)
        except JobValidationError:
            self.transport.requeue(claim)  # admitted again and rejected with the full reason
            return
        claim.job_id, run.job = job.job_id, job
        run.operation_label = self.metrics.label_operation(job.operation)
        if not claim.started:
            self.transport.requeue(claim)
            return
        earlier = self.transport.read_result(job.job_id)
        if earlier and earlier.get("worker_id") == dead_worker and \
                (earlier.get("execution_summary") or {}).get("attempt") == job.attempt:
            log.info("job %s: result was stored before worker %s died; archiving", job.job_id, dead_worker)
            status = earlier.get("status")
            self._remember_key(run, earlier, status)  # it may have died before keeping the key
            self.transport.finish(claim, None if status == "completed" else
                                  {"job_file": claim.name, "job_id": job.job_id, "status": status,
                                   "error": earlier.get("error")}, failed=status != "completed")
            return
        if job.attempt < job.max_attempts:
            doc["execution"] = dict(doc.get("execution") or {}, attempt=job.attempt + 1)
            log.warning("job %s: worker %s died while running attempt %d; re-queued as attempt %d",
                        job.job_id, dead_worker, job.attempt, job.attempt + 1)
            self.transport.requeue(claim, doc)
            return
        error = {"code": "WORKER_CRASHED", "message": f"worker {dead_worker} died while running attempt "
                 f"{job.attempt} of {job.max_attempts}; no attempts left", "phase": "execution",
                 "recoverable": True, "retry_recommended": True}
        run.state = JobState.RUNNING
        run.to(JobState.FAILED)
        self._store(run, self._result_doc(run, "failed", error=error),
                    {"job_file": claim.name, "job_id": job.job_id, "status": "failed", "error": error},
                    failed=True, status="failed")

    # -- shutdown -----------------------------------------------------------------------
    def _shutdown(self):
        cfg = self.cfg
        self._stop.set()
        with self._lock:
            running = sum(1 for r in self._runs.values() if not r.finalized)
        if running:
            log.info("stopping: waiting up to %ss for %d running job(s)", cfg.shutdown_timeout, running)
        deadline = time.monotonic() + cfg.shutdown_timeout
        while self._busy() and time.monotonic() < deadline and not self.hard_stop:
            time.sleep(0.05)
        with self._lock:
            runs = [r for r in self._runs.values() if not r.finalized]
        if runs:
            log.warning("stopping: cancelling %d job(s) still running after %ss", len(runs), cfg.shutdown_timeout)
            for run in runs:
                threading.Thread(target=run.ctx.cancel, args=("shutdown",), daemon=True).start()
            end = time.monotonic() + ABANDON_GRACE_SECONDS
            while self._busy() and time.monotonic() < end:
                time.sleep(0.05)
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                self._abandon(run, "cancelled")
        with self._lock:
            runs = list(self._runs.values())  # threads still inside a handler that ignores cancellation
        self._watchdog_stop.set()
        self._watchdog_wake.set()
        if self._committer is not None:
            with self._lock:
                self._commit_closed = True  # outcomes from now on are stored by their own thread
            self._commits.put(None)
            self._committer.join(cfg.shutdown_timeout + 30.0)
            if self._committer.is_alive():
                log.error("stopping: outcomes still not stored after %ss; their jobs stay in %s for "
                          "recovery", cfg.shutdown_timeout + 30.0, self.transport.jobs_dir)
        for _ in range(cfg.max_concurrent):
            self._names.put(None)  # wake idle job threads now instead of at their next poll
        self._pool.shutdown(wait=not runs, cancel_futures=True)
        self.transport.close()
        self.stuck_threads = len(runs)
        log.info("worker %s stopped: %s", cfg.worker_id,
                 ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "no jobs")

    def _running_starts(self):
        """time.monotonic() start times of the handlers running now (for the metrics)."""
        with self._lock:
            return [r.started_mono for r in self._runs.values()]

    def _busy(self):
        """True while a job is claimed but not started, running, or its outcome not stored yet."""
        with self._lock:
            return (self._claimed_not_started > 0 or self._pending_commits > 0
                    or any(not r.finalized for r in self._runs.values()))

    # -- health -------------------------------------------------------------------------
    def health(self):
        """(healthy, body) for /health."""
        checks = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in self.transport.health().items()}
        age = time.monotonic() - self._heartbeat
        limit = max(5.0, 3 * self.cfg.poll_interval)
        checks["main_loop"] = {"ok": age < limit, "detail": f"last heartbeat {age:.1f}s ago (limit {limit:.0f}s)"}
        healthy = all(c["ok"] for c in checks.values())
        with self._lock:
            active = len(self._runs)
        body = {"status": "healthy" if healthy else "unhealthy", "worker_id": self.cfg.worker_id,
                "pool": self.cfg.pool, "version": __version__,
                "uptime_seconds": round(time.monotonic() - self._started_mono, 3),
                "active_jobs": active, "queue_depth": self._depth, "max_concurrent": self.cfg.max_concurrent,
                "checks": checks}
        return healthy, body


def _pinned_elsewhere(doc, worker_id):
    routing = doc.get("routing") if isinstance(doc, dict) else None
    pinned = routing.get("worker_id") if isinstance(routing, dict) else None
    return isinstance(pinned, str) and pinned != worker_id

