"""The runtime's parts wired as runtime/worker.py wires them, in the test's own thread, on a real
in-memory transport (or the file transport) whose leases and deadlines run on an injected clock.

:class:`Rig` is one worker without its threads: the test takes a delivery and runs it with
:meth:`Rig.run_next` (or :meth:`Rig.start_next` in a thread, for handlers that wait), moves
time with ``rig.clock.advance`` and drives the watchdog (``rig.watchdog.tick()``), the lease
keeper (``rig.leases.renew_all()``) and recovery (``rig.recovery.reclaim()``) one pass at a
time.  The committer is not started, so each outcome is stored in the thread that hands it over
(what the worker does once its committer has closed).  The handlers here are small and driven
by events, never by sleeps.
"""

from __future__ import annotations

import json
import os
import threading
import uuid

from prometheus_client import CollectorRegistry

from guestkit_worker.handlers.base import Handler, HandlerResult
from guestkit_worker.handlers.echo import EchoHandler
from guestkit_worker.handlers.registry import HandlerRegistry
from guestkit_worker.job.errors import HandlerError
from guestkit_worker.metrics.families import WorkerMetrics
from guestkit_worker.runtime.committer import Committer
from guestkit_worker.runtime.config import WorkerConfig
from guestkit_worker.runtime.execution import Executor
from guestkit_worker.runtime.leases import LeaseKeeper
from guestkit_worker.runtime.recovery import Recovery
from guestkit_worker.runtime.runs import RunTable
from guestkit_worker.runtime.watchdog import Watchdog
from guestkit_worker.transports import open_transport
from guestkit_worker.transports.memory import MemoryBroker, MemoryTransport

#: the longest a test waits for a thread or an event, in real seconds (a bound, never a pause)
BOUND = 30.0
#: the watchdog's grace for handlers that ignore cancellation, in clock seconds
GRACE = 5.0


class Clock:
    """Monotonic seconds that move only when the test moves them."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def job(job_id=None, operation="system.echo", data=None, **execution):
    """A valid job document; keyword arguments go to ``execution``."""
    doc = {"version": "1.0", "job_id": job_id or f"unit-{uuid.uuid4().hex[:12]}",
           "created_at": "2026-11-01T00:00:00Z", "kind": "VMOperation", "operation": operation,
           "payload": {"type": f"{operation}.v1", "data": {} if data is None else data}}
    if execution:
        doc["execution"] = execution
    return doc


# -- handlers -------------------------------------------------------------------------------

class _UnitHandler(Handler):
    """A handler of operation ``name`` (payload type NAME.v1) that records the runs it began."""

    name = "unit.base"

    def __init__(self) -> None:
        self.operations = (self.name,)
        self.payload_types = (self.name + ".v1",)
        self.began: list = []  # (job_id, attempt) of every run, in order
        self.entered = threading.Semaphore(0)  # released once per run that began

    def _begin(self, context) -> None:
        self.began.append((context.job_id, context.job.attempt))
        self.entered.release()

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=BOUND), f"{self.name}: no run began within {BOUND}s"


class FailHandler(_UnitHandler):
    """Fails with HandlerError(payload.code, recoverable=payload.recoverable) while the job's
    attempt is at most payload.until_attempt (always, without it); then returns the attempt."""

    name = "unit.fail"

    def execute(self, context, data):
        self._begin(context)
        attempt = context.job.attempt
        if attempt <= data.get("until_attempt", attempt):
            raise HandlerError(data.get("code", "UNIT_FAILED"), f"attempt {attempt} fails on purpose",
                               recoverable=bool(data.get("recoverable")))
        return HandlerResult(data={"attempt": attempt})


class RaiseHandler(_UnitHandler):
    """Raises a plain exception: a bug in a handler."""

    name = "unit.raise"

    def execute(self, context, data):
        self._begin(context)
        raise RuntimeError(data.get("message", "boom"))


class WaitHandler(_UnitHandler):
    """Waits until the test calls :meth:`finish` (then completes) or the job is cancelled (then
    raises JobCancelled, as a handler that honours cancellation does)."""

    name = "unit.wait"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.remaining: list = []  # context.remaining() seen at the start of each run

    def finish(self) -> None:
        self.release.set()

    def execute(self, context, data):
        self.remaining.append(context.remaining())
        self._begin(context)
        for _ in range(int(BOUND / 0.01)):
            if self.release.is_set():
                return HandlerResult(data={"finished": context.job_id})
            if context.cancel_event.wait(0.01):
                context.check_cancelled()
        raise AssertionError(f"{self.name}: neither finished nor cancelled within {BOUND}s")


class StubbornHandler(_UnitHandler):
    """Ignores cancellation: returns only when the test calls :meth:`finish`."""

    name = "unit.stubborn"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def finish(self) -> None:
        self.release.set()

    def execute(self, context, data):
        self._begin(context)
        if not self.release.wait(BOUND):
            raise AssertionError(f"{self.name}: not finished within {BOUND}s")
        return HandlerResult(data={"late": True})


class BadResultHandler(_UnitHandler):
    """Returns data JSON cannot hold."""

    name = "unit.badresult"

    def execute(self, context, data):
        self._begin(context)
        return HandlerResult(data={"value": object()})


def registry() -> HandlerRegistry:
    reg = HandlerRegistry()
    reg.register(EchoHandler())
    for cls in (FailHandler, RaiseHandler, WaitHandler, StubbornHandler, BadResultHandler):
        reg.register(cls())
    return reg


# -- one worker's parts ---------------------------------------------------------------------

class Rig:
    """One worker's runtime parts (no threads of their own) on a transport of the test's.

    broker: a MemoryBroker to share with other rigs (other workers of the queue); made with
    ``clock`` when not given.  files: a directory for the file transport instead (jobs/ and
    results/ under it, shared with rigs given the same directory)."""

    def __init__(self, tmp_path, worker_id: str = "unit-w1", *, broker: MemoryBroker | None = None,
                 clock: Clock | None = None, files: str | None = None, lease_seconds: float = 60.0,
                 max_concurrent: int = 1, pool: str = "default") -> None:
        self.clock = clock or (broker.clock if broker is not None else Clock())
        self.cfg = WorkerConfig(worker_id=worker_id, work_dir=os.path.join(str(tmp_path), "work", worker_id),
                                max_concurrent=max_concurrent, metrics_enabled=False, durable=False,
                                poll_interval=0.05, pool=pool)
        if files is not None:
            self.broker = None
            self.cfg.jobs_dir = os.path.join(files, "jobs")
            self.cfg.results_dir = os.path.join(files, "results")
            self.transport = open_transport(self.cfg)
        else:
            self.broker = broker if broker is not None else MemoryBroker(clock=self.clock)
            self.transport = MemoryTransport(worker_id, broker=self.broker, lease_seconds=lease_seconds)
        self.transport.open()
        self.handlers = registry()
        self.metrics = WorkerMetrics(operations=self.handlers.operations,
                                     handlers=[h.name for h in self.handlers.handlers], worker_id=worker_id,
                                     pool=pool, version="0", max_concurrent=max_concurrent,
                                     registry=CollectorRegistry(), track_last_success=False)
        self.table = RunTable(max_concurrent)
        self.stopping = False
        self.backoffs = 0
        self.committer = Committer(self.transport.commit, lambda r, o: self.executor.stored(r, o),
                                   lambda r, o: self.executor.store_failed(r, o),
                                   on_error=lambda r, o: self.executor.store_error(r, o), backlog=8,
                                   clock=self.clock)
        self.executor = Executor(self.cfg, self.transport, self.handlers, self.metrics, self.table,
                                 self.committer.put, work_dir=self.cfg.work_dir,
                                 stopping=lambda: self.stopping,
                                 on_start=lambda deadline: self.watchdog.notify(deadline),
                                 on_backoff=self._back_off, clock=self.clock)
        self.recovery = Recovery(self.transport, self.committer.put, worker_id=worker_id,
                                 max_job_bytes=self.cfg.max_job_bytes, label=self.metrics.label_operation)
        self.watchdog = Watchdog(self.table.runs, self.executor.stop, self.executor.abandon, clock=self.clock,
                                 grace=GRACE)
        self.leases = LeaseKeeper(self.transport, self.table.runs, self.executor.stop, lease_seconds)
        self.threads: list = []

    def _back_off(self) -> None:
        self.backoffs += 1

    def handler(self, name: str):
        return self.handlers.get(name)

    # -- jobs -----------------------------------------------------------------------------
    def submit(self, doc: dict) -> str:
        assert self.transport.submit(doc).outcome == "created"
        return doc["job_id"]

    def take(self):
        """The next delivery, taken as the consumer thread takes it (counted in hand)."""
        got = self.transport.fetch(1, 0.0)
        assert got, "nothing to fetch"
        self.table.take(1)
        return got[0]

    def run_next(self) -> None:
        """Take the next delivery and run it to its stored outcome in this thread."""
        self.executor.process(self.take())

    def start_next(self, handler: str | None = None) -> threading.Thread:
        """Run the next delivery in a job thread; with handler, return once its run began."""
        d = self.take()
        t = threading.Thread(target=self.executor.process, args=(d,), name=f"job-{d.name}", daemon=True)
        t.start()
        self.threads.append(t)
        if handler is not None:
            self.handler(handler).wait_entered()
        return t

    def join(self) -> None:
        for t in self.threads:
            t.join(BOUND)
            assert not t.is_alive(), f"job thread {t.name} still running after {BOUND}s"
        self.threads.clear()

    def run_of(self, job_id: str):
        runs = [r for r in self.table.runs() if r.job_id == job_id]
        assert runs, f"job {job_id} is not running"
        return runs[0]

    # -- what is seen from outside --------------------------------------------------------
    def result(self, job_id: str) -> dict | None:
        return self.transport.get_result(job_id)

    def status(self, job_id: str) -> str | None:
        st = self.transport.job_status(job_id)
        return st.status if st is not None else None

    def jobs_total(self, operation: str, status: str) -> float:
        value = self.metrics.registry.get_sample_value("guestkit_worker_jobs_total",
                                                       {"operation": operation, "status": status})
        return value or 0.0

    def waiting(self) -> list:
        """The job documents waiting in the memory queue, oldest first."""
        with self.broker.cond:
            return [json.loads(e.raw) for e in self.broker.waiting.values()]
