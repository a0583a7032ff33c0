"""The worker: wires the parts together and runs its threads.

* the main thread (:meth:`Worker.run`): heartbeat, queue depth, cancel requests, recovery of
  dead workers' jobs and transport housekeeping at intervals, and the shutdown;
* one consumer thread: ``transport.fetch(free job threads, timeout)``, handing each delivery to
  a job thread, so the worker never holds more jobs than it has free threads;
* ``--max-concurrent`` job threads, each running :meth:`Executor.process` on one delivery at a
  time (admission, idempotency reservation, handler, outcome);
* the committer (group commit of outcomes), the watchdog (timeouts), and, for transports with
  leases, a lease keeper that renews every running delivery and does nothing else.

Shutdown (first signal): stop fetching, let running jobs finish until --shutdown-timeout, then
stop them (their jobs go back to the queue), store every outcome, all within one deadline.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import REGISTRY

from .. import __version__
from ..handlers import default_registry
from ..metrics.families import NullMetrics, WorkerMetrics, WorkerMetricsInterface
from ..system.diskspace import check_disk_space
from ..system.orphans import ChildRegistry
from ..system.tempfiles import TEMP_SWEEP_INTERVAL_SECONDS
from ..transports import open_transport
from .committer import COMMIT_BACKLOG_PER_THREAD, Committer
from .config import WorkerConfig
from .execution import Executor
from .leases import LeaseKeeper
from .recovery import Recovery
from .runs import RunTable
from .watchdog import ABANDON_GRACE_SECONDS, Watchdog

__all__ = ["Worker"]

log = logging.getLogger(__name__)

RECOVERY_INTERVAL_SECONDS = 30.0  #: how often jobs of dead workers are looked for
CANCEL_POLL_SECONDS = 1.0  #: how often running jobs are checked for cancel requests
#: After --shutdown-timeout and the grace for stopped handlers, how long outcomes may take to store.
STORE_GRACE_SECONDS = 30.0


class Worker:
    #: called once run() has started the worker's own threads (e.g. the HTTP port accepts only then)
    on_running = None

    def __init__(self, config: WorkerConfig, *, handlers: Any = None,
                 metrics: WorkerMetricsInterface | None = None,
                 registry: Any = REGISTRY, transport: Any = None) -> None:
        self.cfg = cfg = config
        self.handlers = handlers if handlers is not None else default_registry()
        if metrics is None:
            metrics = (WorkerMetrics(operations=self.handlers.operations,
                                     handlers=[h.name for h in self.handlers.handlers],
                                     worker_id=cfg.worker_id, pool=cfg.pool, version=__version__,
                                     max_concurrent=cfg.max_concurrent, registry=registry,
                                     track_last_success=not cfg.once)
                       if cfg.metrics_enabled else NullMetrics())
        self.metrics = metrics
        self.transport = transport if transport is not None else open_transport(cfg, metrics=self.metrics)
        self.transport.stopping = self._stopping  # a wait for the transport's server ends on a stop
        self.table = RunTable(cfg.max_concurrent)
        self.metrics.track_active(self.table.active)  # until its thread returns, not its timeout
        self.metrics.track_queue_depth(self.queue_depth)
        self.metrics.track_health(lambda: {name: c["ok"]
                                           for name, c in self.health()[1]["checks"].items()})
        self.metrics.track_running(self.table.running_starts)
        from .vulnwatch import DatabaseRefresher, scan_snapshot
        self.metrics.track_scans(scan_snapshot)
        self.vuln_refresher = DatabaseRefresher(cfg.vuln_db) if cfg.vuln_db and not cfg.once else None
        # the committer's callbacks go to the executor, which is built next (it hands outcomes over)
        self.committer = Committer(self.transport.commit, lambda r, o: self.executor.stored(r, o),
                                   lambda r, o: self.executor.store_failed(r, o),
                                   on_error=lambda r, o: self.executor.store_error(r, o),
                                   backlog=COMMIT_BACKLOG_PER_THREAD * cfg.max_concurrent,
                                   on_idle=self._outcomes_stored)
        self.executor = Executor(cfg, self.transport, self.handlers, self.metrics, self.table,
                                 self.committer.put, work_dir=os.path.abspath(cfg.work_dir),
                                 stopping=self._stopping,
                                 on_start=lambda deadline: self.watchdog.notify(deadline),
                                 on_backoff=self._back_off)
        self.recovery = Recovery(self.transport, self.committer.put, worker_id=cfg.worker_id,
                                 max_job_bytes=cfg.max_job_bytes, label=self.metrics.label_operation)
        self.watchdog = Watchdog(self.table.runs, self.executor.stop, self.executor.abandon)
        lease = getattr(self.transport, "lease_seconds", None)
        self.leases = (LeaseKeeper(self.transport, self.table.runs, self.executor.stop, lease)
                       if lease else None)
        # leased deliveries (Redis) are taken over a lease after their worker died: look as often
        self._recovery_interval = (min(RECOVERY_INTERVAL_SECONDS, lease / 2) if lease
                                   else RECOVERY_INTERVAL_SECONDS)
        self._stop = threading.Event()         # stop fetching and taking new jobs
        self._wake = threading.Event()         # wake the main loop early
        self._drained = threading.Event()      # --once: nothing left to fetch or finish
        self._deliveries: queue.Queue = queue.Queue()
        self._consumer: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._queued = 0                       # transport.depth() at the last look
        self._depth_lock = threading.Lock()    # one look at a time: the last one stored is the newest
        self._heartbeat = self._started_mono = time.monotonic()
        self._backoff_until = 0.0
        self._last = {"recovery": 0.0, "sweep": 0.0, "cancel": 0.0, "depth": 0.0}
        self._sweeper: threading.Thread | None = None
        self.hard_stop = False                 # set by a second signal
        #: why the worker stopped on its own, whatever its jobs did (worker_id_taken: its worker id
        #: taken); the CLI maps it to an exit status
        self.fatal_cause: str | None = None
        self.stuck_threads = 0

    # -- public -------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop taking jobs and drain (safe from a signal handler: only sets flags)."""
        self._stop_requested = True

    _stop_requested = False

    def cancel_all_now(self) -> int:
        """A second signal: stop every running job at once, without the shutdown timeout: its
        processes SIGKILLed (whole trees), its ``cancelled`` result stored and its job given
        back to the queue, right here; a handler returning later is discarded.  Jobs taken but
        not started stay held and are given back by the next start's recovery."""
        self.hard_stop = True
        self._stop.set()
        self.committer.close(5.0)  # from now on outcomes are stored in this thread, before the exit
        return self.executor.cancel_now(self.table.runs())

    @property
    def outcomes(self) -> dict:
        return self.table.outcomes()

    def exit_status(self) -> int:
        """0 when every job ended completed or duplicate, else 1."""
        return 1 if any(v for k, v in self.outcomes.items() if k not in ("completed", "duplicate")) else 0

    def queue_depth(self) -> int:
        """Jobs waiting: the queue at the last look plus those taken and not started yet."""
        return self._queued + self.table.not_started

    def _look_up_depth(self) -> None:
        with self._depth_lock:
            self._last["depth"] = time.monotonic()
            self._queued = self.transport.depth()

    def open(self) -> None:
        """Open the transport, remove stale temp files, recover jobs of dead workers."""
        os.makedirs(self.cfg.work_dir, exist_ok=True)
        self.transport.open()
        # processes left by workers that were killed (their children's children) go first
        self.executor.children = ChildRegistry(os.path.join(self.executor.work_dir, ".children"),
                                               self.cfg.worker_id)
        self.executor.children.reap_dead_workers()
        # handlers check a job's paths against --allow-path while validating it: a refused
        # path rejects the job before anything looks at the file system
        self.handlers.configure_paths(self.cfg.allow_paths, self.transport.protected_paths,
                                      allow_backing=self.cfg.allow_backing_files)
        self.handlers.configure_vulns(self.cfg.vuln_db, self.cfg.vuln_db_max_age)
        self.transport.maintain()
        self.recovery.reclaim()
        self._last["recovery"] = self._last["sweep"] = time.monotonic()

    def run(self) -> int:
        """Run until stopped (daemon) or until the jobs present at start are done (--once)."""
        cfg = self.cfg
        self.committer.start()
        self._pool = ThreadPoolExecutor(max_workers=cfg.max_concurrent, thread_name_prefix="job")
        for _ in range(cfg.max_concurrent):
            self._pool.submit(self._job_thread)
        self._consumer = threading.Thread(target=self._consume, name="consumer", daemon=True)
        self._consumer.start()
        self.watchdog.start()
        if self.leases is not None:
            self.leases.start()
        if self.vuln_refresher is not None:
            self.vuln_refresher.start()
        if self.on_running is not None:
            self.on_running()
        log.info("worker %s (pool %s) serving %s from %s, %d at once%s", cfg.worker_id, cfg.pool,
                 ", ".join(self.handlers.operations), self.transport.describe(), cfg.max_concurrent,
                 " (one-shot)" if cfg.once else "")
        try:
            while not self._stop_requested:
                self._heartbeat = time.monotonic()
                if cfg.once and self._drained.is_set() and self.committer.pending == 0:
                    break
                self._tick()
                self._wake.wait(min(cfg.poll_interval, 0.5))
                self._wake.clear()
        finally:
            self._shutdown()
        return self.exit_status()

    # -- main loop ----------------------------------------------------------------------
    def _tick(self) -> None:
        now, last = time.monotonic(), self._last
        if getattr(self.transport, "identity_lost", None) and self.fatal_cause is None:
            self._stop_for_identity()
        try:
            if now - last["depth"] >= 0.5:  # not after every job: O(jobs) for files; see _consume
                self._look_up_depth()
            if now - last["cancel"] >= CANCEL_POLL_SECONDS:
                last["cancel"] = now
                self._poll_cancel_requests()
            if not self.cfg.once and now - last["recovery"] > self._recovery_interval:
                last["recovery"] = now
                self.recovery.reclaim()
        except Exception:  # e.g. a storage error: tried again at the next interval; the loop goes on
            log.exception("main loop: a periodic task failed; trying again later")
        if now - last["sweep"] > TEMP_SWEEP_INTERVAL_SECONDS and not self.cfg.once:
            last["sweep"] = now
            if self._sweeper is None or not self._sweeper.is_alive():
                self._sweeper = threading.Thread(target=self.transport.maintain, name="maintain", daemon=True)
                self._sweeper.start()

    def _stop_for_identity(self) -> None:
        """Another live process took this worker's id: stop as on a first signal (running jobs
        finish or go back to the queue; the transport takes nothing more), with the cause
        ``worker_id_taken`` for the command line's exit status."""
        self.fatal_cause = "worker_id_taken"
        log.error("%s; this worker stops: give every worker of a fleet its own --worker-id",
                  self.transport.identity_lost, extra={"event": "worker_id_taken"})
        self.request_stop()

    def _poll_cancel_requests(self) -> None:
        runs = [r for r in self.table.runs() if r.ctx is not None and r.stop_at is None
                and r.job.execution.get("cancellable", True)]
        if runs:
            asked = self.transport.cancel_requests([r.job_id for r in runs])
            for run in runs:
                if run.job_id in asked:
                    self.executor.stop(run, "requested")

    def _outcomes_stored(self) -> None:
        """The committer has nothing left: a one-shot run may be over (consumer, then main loop)."""
        if self.cfg.once:
            self.table.wake()
            if self._drained.is_set():
                self._wake.set()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._stop_requested

    def _back_off(self) -> None:
        self._backoff_until = time.monotonic() + max(1.0, 5 * self.cfg.poll_interval)

    # -- consumer and job threads -------------------------------------------------------
    def _consume(self) -> None:
        """Fetch as many jobs as there are free job threads and hand them over."""
        poll = min(self.cfg.poll_interval, 0.5)
        table = self.table
        while not self._stopping():
            try:
                if time.monotonic() < self._backoff_until:
                    time.sleep(min(poll, max(0.0, self._backoff_until - time.monotonic())))
                    continue
                busy = table.busy() or self.committer.pending  # before fetching: see --once below
                free = table.free_slots()
                if free <= 0:
                    with table.changed:
                        table.changed.wait_for(lambda: table.in_hand < table.slots or self._stopping(), poll)
                    continue
                got = self.transport.fetch(free, poll)
                if got:
                    table.take(len(got))
                    for d in got:
                        self._deliveries.put(d)
                if len(got) < free:  # the queue looks empty: a look is cheap now, and no depth stays stale
                    try:
                        self._look_up_depth()
                    except Exception as exc:  # the main loop looks again and logs its failure
                        log.debug("queue depth: %s", exc)
                if got or not self.cfg.once:
                    continue
                if not busy:  # --once: nothing ran that could have queued a retry
                    self._drained.set()
                    self._wake.set()
                    return
                with table.changed:  # --once, jobs still running: one may queue a retry
                    table.changed.wait(poll)
            except Exception:  # the consumer must outlive any error; bounded pause, then again
                log.exception("fetching jobs failed; trying again")
                time.sleep(poll)

    def _job_thread(self) -> None:
        take_next = self._take_next if getattr(self.transport, "fetch_from_job_threads", False) else None
        d = None
        while True:
            if d is None:
                d = self._deliveries.get()
                if d is None:  # shutdown sentinel
                    return
            if self._stopping():  # taken, never started: back to the queue
                try:
                    self.transport.release(d)
                except OSError as exc:
                    log.error("job %s: cannot give it back (%s); it stays held for recovery", d.name, exc)
                self.table.done(False)
                d = None
                continue
            try:
                d = self.executor.process(d, take_next)
            except Exception:
                log.exception("job %s: unexpected error; the worker keeps running", d.name)
                d = None

    def _take_next(self) -> Any | None:
        """The next delivery for a job thread that has just finished one, taken without waiting
        (no hand-over through the consumer); None when the queue looks empty, or while the
        worker stops or backs off (the consumer then decides)."""
        if self._stopping() or time.monotonic() < self._backoff_until:
            return None
        try:
            got = self.transport.fetch(1, 0.0)
        except Exception as exc:  # the consumer's fetch reports it
            log.debug("fetching in a job thread: %s", exc)
            return None
        return got[0] if got else None

    # -- shutdown -----------------------------------------------------------------------
    def _shutdown(self) -> None:
        cfg = self.cfg
        self._stop.set()
        drain_until = time.monotonic() + cfg.shutdown_timeout
        deadline = drain_until + ABANDON_GRACE_SECONDS + STORE_GRACE_SECONDS  # for everything below
        if self._consumer is not None:
            self._consumer.join(max(1.0, cfg.poll_interval) + 1.0)
        running = len([r for r in self.table.runs() if not r.finalized])
        if running:
            log.info("stopping: waiting up to %ss for %d running job(s)", cfg.shutdown_timeout, running)
        self._wait(lambda: not self._busy(), drain_until)
        if self.hard_stop:  # a second signal: nothing more is stored or given back (see cli)
            return
        runs = [r for r in self.table.runs() if not r.finalized and r.ctx is not None]
        if runs:
            log.warning("stopping: cancelling %d job(s) still running after %ss", len(runs),
                        cfg.shutdown_timeout)
            for run in runs:
                self.executor.stop(run, "shutdown")
            self._wait(lambda: not self._busy(), time.monotonic() + ABANDON_GRACE_SECONDS)
            for run in self.table.runs():
                self.executor.abandon(run)
        stuck = self.table.runs()  # threads still inside a handler that ignores cancellation
        self.watchdog.stop()
        if self.leases is not None:
            self.leases.stop()
        if self.vuln_refresher is not None:
            self.vuln_refresher.stop()
        if not self.committer.close(max(1.0, deadline - time.monotonic())):
            log.error("stopping: outcomes still not stored; their jobs stay held for recovery")
        for _ in range(cfg.max_concurrent):
            self._deliveries.put(None)  # wake idle job threads now
        self._pool.shutdown(wait=not stuck, cancel_futures=True)
        self.transport.close()
        self.stuck_threads = len(stuck)
        log.info("worker %s stopped: %s", cfg.worker_id,
                 ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "no jobs")

    def _wait(self, done: Any, until: float) -> None:
        while not done() and time.monotonic() < until and not self.hard_stop:
            time.sleep(0.05)

    def _busy(self) -> bool:
        """True while a job is in hand and undecided, or an outcome is not stored yet."""
        return self.table.busy() > 0 or self.committer.pending > 0

    # -- health -------------------------------------------------------------------------
    def health(self) -> tuple:
        """(healthy, body) for /health."""
        disk = check_disk_space({**self.transport.local_dirs, "work": self.cfg.work_dir},
                                self.cfg.min_free_space)
        found = {**self.transport.health(), "disk_space": disk}
        checks = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in found.items()}
        age = time.monotonic() - self._heartbeat
        limit = max(5.0, 3 * self.cfg.poll_interval)
        checks["main_loop"] = {"ok": age < limit,
                               "detail": f"last heartbeat {age:.1f}s ago (limit {limit:.0f}s)"}
        threads = {"committer": self.committer.alive(), "watchdog": self.watchdog.alive(),
                   "consumer": self._consumer is None or self._consumer.is_alive() or self._stopping()
                   or self._drained.is_set()}
        if self.leases is not None:
            threads["lease_keeper"] = self.leases.alive()
        dead = sorted(name for name, ok in threads.items() if not ok)
        checks["threads"] = {"ok": not dead,
                             "detail": f"stopped: {', '.join(dead)}" if dead else "all running"}
        healthy = all(c["ok"] for c in checks.values())
        body = {"status": "healthy" if healthy else "unhealthy", "worker_id": self.cfg.worker_id,
                "pool": self.cfg.pool, "version": __version__,
                "uptime_seconds": round(time.monotonic() - self._started_mono, 3),
                "active_jobs": self.table.active(), "queue_depth": self.queue_depth(),
                "max_concurrent": self.cfg.max_concurrent, "checks": checks}
        return healthy, body

