"""Prometheus metric families of the worker, with labelled children cached for the hot path.

The worker records through :class:`WorkerMetricsInterface`: :class:`WorkerMetrics` when metrics
are on, :class:`NullMetrics` when they are off.  Both implement every method of the interface
explicitly, so a misspelt call fails at once (AttributeError) instead of recording nothing.
Handlers record through their context, never through prometheus_client directly.  Label values
are bounded: an operation that no handler serves is recorded as ``unknown``.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import time
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ..job.states import OUTCOME_STATUSES
from ..system import atomic
from .histogram import LeanHistogram
from .live import HealthChecks, OldestRunningJob, OptionalTimestamp, ScanTotals

log = logging.getLogger(__name__)

HANDLER_STATUSES = ("success", "error", "timeout")
CHECKSUM_STATUSES = ("success", "failure", "skipped")
UNKNOWN_OPERATION = "unknown"
#: sub-second buckets before the spec's: quantiles of jobs that take milliseconds are not 0.5-0.99 s
SUB_SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
#: the spec's 1, 2, 4, ... 2048 seconds (12 exponential buckets), after the sub-second ones;
#: +Inf is added by prometheus_client.
DURATION_BUCKETS = SUB_SECOND_BUCKETS + tuple(float(2 ** i) for i in range(12))
#: queue wait: sub-second, then one second to a day
QUEUE_WAIT_BUCKETS = SUB_SECOND_BUCKETS + (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
                                           21600.0, 86400.0)
TEXTFILE_NAME = "guestkit_worker.prom"
#: why a queue entry went to the dead letters (Redis transport), each exported from the start
DEAD_LETTER_REASONS = ("not_json", "too_large", "no_job_field", "no_job_id", "duplicate_job_id",
                       "max_deliveries", "rejected", "not_for_this_pool", "reclaim_failed")
#: transport operations whose errors are counted (a queue server unreachable, in trouble)
TRANSPORT_OPERATIONS = ("open", "fetch", "start", "renew", "commit", "retry", "release", "reclaim",
                        "dead_letter", "depth", "submit", "get_result", "status", "list", "cancel",
                        "cancel_requests", "idempotency", "progress", "health", "maintain", "close")


class WorkerMetricsInterface(abc.ABC):
    """Every call the worker, its handlers' contexts, its transport and the one-shot textfile
    make on the worker's metrics.  The transport's calls (:meth:`jobs_reclaimed` to
    :meth:`transport_error`) are those of ``transports.base.TransportObserver``, which a
    transport is given instead of this class (transports import nothing of metrics)."""

    # -- read at scrape time: the owner hands in functions -----------------------------------
    @abc.abstractmethod
    def track_health(self, checks: Callable[[], dict]) -> None:
        """Serve ``guestkit_worker_health_check{check}`` from ``checks()`` -> {name: ok}."""

    @abc.abstractmethod
    def track_running(self, starts: Callable[[], Iterable[float]]) -> None:
        """Serve ``guestkit_worker_oldest_running_job_seconds`` from ``starts()``: the
        ``time.monotonic()`` start times of the running handlers."""

    @abc.abstractmethod
    def track_active(self, count: Callable[[], int]) -> None:
        """Serve ``guestkit_worker_active_jobs`` from ``count()``: the number of handlers whose
        thread has not returned yet (the worker's table of running handlers)."""

    @abc.abstractmethod
    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        """Serve ``guestkit_worker_queue_depth`` from ``depth()`` when scraped (the worker's
        last look at the queue plus the jobs it holds not started), never a stale copy."""

    @abc.abstractmethod
    def track_scans(self, snapshot: Callable[[], dict]) -> None:
        """Serve the vulnerability database and scan families (``guestkit_vuln_db_*``,
        ``guestkit_scan_findings_total``) from ``snapshot()`` when scraped (see ScanTotals)."""

    # -- one job ---------------------------------------------------------------------------
    @abc.abstractmethod
    def label_operation(self, operation: str) -> str:
        """The ``operation`` label value for a job's operation (bounded: ``unknown`` for one
        that no handler serves)."""

    @abc.abstractmethod
    def job_finished(self, operation: str, status: str, duration: float) -> None:
        """A job ended with outcome ``status`` after ``duration`` seconds."""

    @abc.abstractmethod
    def handler_started(self, queue_wait: float | None = None) -> None:
        """A handler started, ``queue_wait`` seconds after the job was created (or claimed)."""

    @abc.abstractmethod
    def handler_returned(self, handler: str, status: str, duration: float) -> None:
        """A handler returned with ``status`` (success, error, timeout) after ``duration`` s."""

    @abc.abstractmethod
    def checksum(self, status: str) -> None:
        """An image checksum was verified: ``status`` success, failure or skipped."""

    @abc.abstractmethod
    def disk_io(self, read_bytes: int = 0, write_bytes: int = 0) -> None:
        """A handler read and wrote these many bytes of disk images."""

    @abc.abstractmethod
    def result_write_failed(self) -> None:
        """A result could not be stored (its job went back to the queue)."""

    # -- what the transport reports (transports.base.TransportObserver) ---------------------
    @abc.abstractmethod
    def jobs_reclaimed(self, n: int = 1) -> None:
        """``n`` deliveries of dead workers were taken back."""

    @abc.abstractmethod
    def lease_lost(self) -> None:
        """A lease this worker held was taken by another worker."""

    @abc.abstractmethod
    def dead_lettered(self, reason: str) -> None:
        """A queue entry was moved to the dead letters (``reason``: why)."""

    @abc.abstractmethod
    def set_queue_oldest_age(self, seconds: float) -> None:
        """The oldest job not yet delivered has waited ``seconds``."""

    @abc.abstractmethod
    def transport_error(self, operation: str) -> None:
        """A call of ``operation`` (fetch, commit, ...) to the queue's server failed."""

    # -- the one-shot textfile -------------------------------------------------------------
    @abc.abstractmethod
    def collectors(self) -> list:
        """The worker's own collectors (not process_* / python_*), for the textfile export."""

    @property
    @abc.abstractmethod
    def last_success_value(self) -> float | None:
        """Unix time of the last success, None before the first (no sample is exported then)."""

    @last_success_value.setter
    @abc.abstractmethod
    def last_success_value(self, value: float | None) -> None:
        """Set the last success time (the textfile keeps the previous file's on a failed run)."""


class WorkerMetrics(WorkerMetricsInterface):
    """Every metric family of the worker, registered in one registry."""

    def __init__(self, *, operations: Iterable[str], handlers: Iterable[str], worker_id: str, pool: str,
                 version: str, max_concurrent: int, registry: CollectorRegistry = REGISTRY,
                 track_last_success: bool = True) -> None:
        self.registry = registry
        self.track_last_success = track_last_success
        self._job_families(registry)
        self._worker_families(registry)
        self._transport_families(registry)
        self.info.labels(worker_id, pool, version).set(1)
        self.capacity.set(max_concurrent)
        # Two gauges are read when scraped instead of updated per job (each update is a locked
        # method chain): active jobs from the owner's table of running handlers, last success
        # from a plain attribute (assigning a float is atomic).
        self._active_fn = _zero
        self.active.set_function(lambda: self._active_fn())
        self.operations = set(operations)
        self._cache_children(list(operations), list(handlers))

    def _job_families(self, r: CollectorRegistry) -> None:
        """What one job updates: the three histograms are LeanHistogram (one lock, bisect; see
        .histogram), the two totals their counts."""
        self.jobs_duration = LeanHistogram("guestkit_worker_jobs_duration_seconds",
                                           "Wall time of ended jobs, by operation and final status.",
                                           ["operation", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.jobs_total = CountOf("guestkit_worker_jobs", "Jobs that ended, by operation and final status.",
                                  self.jobs_duration, registry=r)
        self.handler_duration = LeanHistogram("guestkit_handler_duration_seconds",
                                              "Handler run time, by handler and outcome.",
                                              ["handler", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.handler_total = CountOf("guestkit_handler_executions", "Handler runs, by handler and outcome.",
                                     self.handler_duration, registry=r)
        self.queue_wait = LeanHistogram("guestkit_worker_queue_wait_seconds",
                                        "Time from job creation (or claim, if later) to handler start.",
                                        buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self.checksums = Counter("guestkit_checksum_verifications",
                                 "Image checksum verifications by outcome.", ["status"], registry=r)
        self.disk_read = Counter("guestkit_worker_disk_read_bytes", "Bytes handlers read from disk images.",
                                 registry=r)
        self.disk_write = Counter("guestkit_worker_disk_write_bytes", "Bytes handlers wrote to disk images.",
                                  registry=r)
        self.result_errors = Counter("guestkit_worker_result_write_errors",
                                     "Results that could not be written (job returned to the queue).",
                                     registry=r)

    def _worker_families(self, r: CollectorRegistry) -> None:
        """The worker's identity and state; the live ones are read when scraped, from functions
        the owner hands in (track_active, track_queue_depth, track_health, track_running)."""
        self.active = Gauge("guestkit_worker_active_jobs",
                            "Handlers running now (a timed-out handler counts until its thread returns).",
                            registry=r)
        self.depth = Gauge("guestkit_worker_queue_depth",
                           "Jobs waiting, including those claimed but not yet started.", registry=r)
        self.info = Gauge("guestkit_worker_info", "Worker identity; always 1.",
                          ["worker_id", "pool", "version"], registry=r)
        self.capacity = Gauge("guestkit_worker_max_concurrent_jobs", "Jobs this worker runs at once at most.",
                              registry=r)
        self.last_success = OptionalTimestamp(
            "guestkit_worker_last_success_timestamp_seconds",
            "Unix time of the last completed job (one-shot: of the last successful run); "
            "absent before the first.",
            registry=r)
        self.health_checks = HealthChecks(
            "guestkit_worker_health_check",
            "Checks of /health: 1 ok, 0 failing (any 0 makes /health answer 503).", registry=r)
        self.oldest_running = OldestRunningJob(
            "guestkit_worker_oldest_running_job_seconds",
            "How long the longest-running handler has been running; 0 when none runs.", registry=r)
        self.scans = ScanTotals(registry=r)

    def _transport_families(self, r: CollectorRegistry) -> None:
        """What the transport reports (through the observer calls), every label exported from
        the start."""
        self.reclaimed = Counter("guestkit_worker_jobs_reclaimed",
                                 "Deliveries taken over from workers that died or lost their lease.",
                                 registry=r)
        self.leases_lost = Counter("guestkit_worker_leases_lost",
                                   "Deliveries this worker found taken over by another (its outcome not "
                                   "stored).", registry=r)
        self.dead_letters = Counter("guestkit_worker_dead_lettered",
                                    "Queue entries moved to the dead letters, by reason.", ["reason"],
                                    registry=r)
        self.transport_errors = Counter("guestkit_worker_transport_errors",
                                        "Queue or store operations that failed (server unreachable or in "
                                        "trouble).", ["operation"], registry=r)
        self.oldest_waiting = Gauge("guestkit_worker_queue_oldest_waiting_seconds",
                                    "Age of the oldest job not yet delivered to any worker (Redis transport; "
                                    "0 when none waits).", registry=r)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for op in TRANSPORT_OPERATIONS:
            self.transport_errors.labels(op)

    def _cache_children(self, operations: list, handlers: list) -> None:
        """The labelled children of the per-job families, looked up once: no .labels() on the
        hot path."""
        self._job_children = {(op, st): self.jobs_duration.labels(op, st)
                              for op in operations + [UNKNOWN_OPERATION] for st in OUTCOME_STATUSES}
        self._handler_children = {(h, st): self.handler_duration.labels(h, st)
                                  for h in handlers for st in HANDLER_STATUSES}
        self._checksum_children = {st: self.checksums.labels(st) for st in CHECKSUM_STATUSES}
        self._queue_wait_observe = self.queue_wait.labels().observe

    def collectors(self) -> list:
        return [self.jobs_total, self.jobs_duration, self.active, self.depth, self.handler_total,
                self.handler_duration, self.checksums, self.disk_read, self.disk_write, self.info,
                self.capacity, self.queue_wait, self.last_success, self.result_errors, self.reclaimed,
                self.leases_lost, self.dead_letters, self.transport_errors, self.oldest_waiting,
                self.scans]

    @property
    def last_success_value(self) -> float | None:
        return self.last_success.value

    @last_success_value.setter
    def last_success_value(self, value: float | None) -> None:
        self.last_success.value = value

    def track_health(self, checks: Callable[[], dict]) -> None:
        self.health_checks.track(checks)

    def track_running(self, starts: Callable[[], Iterable[float]]) -> None:
        self.oldest_running.track(starts)

    def track_active(self, count: Callable[[], int]) -> None:
        self._active_fn = count

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.depth.set_function(depth)

    def track_scans(self, snapshot: Callable[[], dict]) -> None:
        self.scans.track(snapshot)

    def label_operation(self, operation: str) -> str:
        return operation if operation in self.operations else UNKNOWN_OPERATION

    def job_finished(self, operation: str, status: str, duration: float) -> None:
        child = self._job_children.get((operation, status))
        if child is None:
            child = self._job_children[(UNKNOWN_OPERATION, status)]
        child.observe(duration)  # also counts guestkit_worker_jobs_total
        if status == "completed" and self.track_last_success:
            self.last_success_value = time.time()

    def handler_started(self, queue_wait: float | None = None) -> None:
        if queue_wait is not None:
            self._queue_wait_observe(queue_wait if queue_wait > 0.0 else 0.0)

    def handler_returned(self, handler: str, status: str, duration: float) -> None:
        child = self._handler_children.get((handler, status))
        if child is None:  # a handler registered after start: create once, then cached
            child = self._handler_children[(handler, status)] = self.handler_duration.labels(handler, status)
        child.observe(duration)  # also counts guestkit_handler_executions_total

    def checksum(self, status: str) -> None:
        self._checksum_children[status].inc()

    def disk_io(self, read_bytes: int = 0, write_bytes: int = 0) -> None:
        if read_bytes:
            self.disk_read.inc(read_bytes)
        if write_bytes:
            self.disk_write.inc(write_bytes)

    def result_write_failed(self) -> None:
        self.result_errors.inc()

    def jobs_reclaimed(self, n: int = 1) -> None:
        self.reclaimed.inc(n)

    def lease_lost(self) -> None:
        self.leases_lost.inc()

    def dead_lettered(self, reason: str) -> None:
        self.dead_letters.labels(reason if reason in DEAD_LETTER_REASONS else "rejected").inc()

    def set_queue_oldest_age(self, seconds: float) -> None:
        self.oldest_waiting.set(seconds)

    def transport_error(self, operation: str) -> None:
        self.transport_errors.labels(operation if operation in TRANSPORT_OPERATIONS else "other").inc()


class CountOf(Collector):
    """A counter family served from the ``_count`` series of a labelled histogram.

    A job's end is recorded once, in the duration histogram, whose count is by definition the
    number of such ends; exposing that count as ``NAME_total`` (type counter, same labels)
    saves a second locked update per event on the hot path.  It is read at scrape time, so
    the counter and the histogram's count never disagree.
    """

    def __init__(self, name, documentation, histogram, *, registry=REGISTRY):
        self.name, self.documentation, self.histogram = name, documentation, histogram
        self.labelnames = histogram.labelnames
        if registry is not None:
            registry.register(self)

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, count in self.histogram.counts():
            family.add_metric(list(values), count)
        yield family


class NullMetrics(WorkerMetricsInterface):
    """The worker's metrics when they are disabled: every call records nothing, and the
    operation label is the operation itself (nothing is bounded where nothing is exported)."""

    def track_health(self, checks: Callable[[], dict]) -> None:
        pass

    def track_running(self, starts: Callable[[], Iterable[float]]) -> None:
        pass

    def track_active(self, count: Callable[[], int]) -> None:
        pass

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        pass

    def track_scans(self, snapshot: Callable[[], dict]) -> None:
        pass

    def label_operation(self, operation: str) -> str:
        return operation

    def job_finished(self, operation: str, status: str, duration: float) -> None:
        pass

    def handler_started(self, queue_wait: float | None = None) -> None:
        pass

    def handler_returned(self, handler: str, status: str, duration: float) -> None:
        pass

    def checksum(self, status: str) -> None:
        pass

    def disk_io(self, read_bytes: int = 0, write_bytes: int = 0) -> None:
        pass

    def result_write_failed(self) -> None:
        pass

    def jobs_reclaimed(self, n: int = 1) -> None:
        pass

    def lease_lost(self) -> None:
        pass

    def dead_lettered(self, reason: str) -> None:
        pass

    def set_queue_oldest_age(self, seconds: float) -> None:
        pass

    def transport_error(self, operation: str) -> None:
        pass

    def collectors(self) -> list:
        return []

    @property
    def last_success_value(self) -> float | None:
        return None

    @last_success_value.setter
    def last_success_value(self, value: float | None) -> None:
        pass


def _zero():
    return 0


_LAST_SUCCESS_RE = re.compile(r"^guestkit_worker_last_success_timestamp_seconds\s+(\S+)\s*$", re.M)


def previous_last_success(path):
    """The last_success value stored in an earlier textfile, or None."""
    try:
        with open(path, encoding="utf-8") as fh:
            m = _LAST_SUCCESS_RE.search(fh.read())
    except OSError:
        return None
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def _sample_name(line):
    """Metric name of an exposition line ('# HELP name ...', 'name{...} v' or 'name v')."""
    if line.startswith(b"#"):
        parts = line.split(b" ", 3)
        return parts[2] if len(parts) > 2 else b""
    return re.split(rb"[{ ]", line, maxsplit=1)[0]


def write_textfile(directory, metrics, *, succeeded, now=None):
    """Write DIR/guestkit_worker.prom for node_exporter's textfile collector, atomically.

    Holds the worker's own families (no process_*/python_*, which node_exporter exports for
    itself), last_run = now and last_success = now only when the run succeeded (otherwise the
    value of the previous file is kept), no timestamps and no ``_created`` series.
    """
    now = time.time() if now is None else now
    path = os.path.join(directory, TEXTFILE_NAME)
    registry = CollectorRegistry(auto_describe=True)
    for c in metrics.collectors():
        registry.register(c)
    last_run = Gauge("guestkit_worker_last_run_timestamp_seconds",
                     "Unix time the last one-shot run ended.", registry=registry)
    last_run.set(now)
    if succeeded:
        metrics.last_success_value = now
    else:
        prev = previous_last_success(path)
        if prev is not None:
            metrics.last_success_value = prev
    text = b"".join(line + b"\n" for line in generate_latest(registry).splitlines()
                    if not _sample_name(line).endswith(b"_created"))
    atomic.write_bytes(path, text, mode=0o644)
    os.chmod(path, 0o644)  # readable by node_exporter whatever the umask
    log.info("wrote %s (%d bytes)", path, len(text))
    return path
