"""The object handed to every handler: job identity, cancellation, progress, children, metrics."""

import logging
import subprocess
import threading
import time

from ..job.errors import JobCancelled
from ..job.timestamps import stamp
from ..system.paths import check_path as _check_path
from ..system.procs import ChildProcess

log = logging.getLogger(__name__)


class HandlerContext:
    """Per-job view of the worker for a handler.

    Handlers use it instead of touching the worker: ``cancelled``/``check_cancelled()`` to
    honour timeouts and shutdown, ``progress()`` to report phases, ``run()`` to start child
    processes that die with the job, and ``record_*`` to feed the metrics.
    """

    def __init__(self, job, *, worker_id, work_dir, metrics, progress_sink=None,
                 deadline=None, allowed_paths=None, protected_paths=(), children=None, clock=None):
        self.job = job
        if clock is not None:  # the clock of ``deadline`` (default time.monotonic, see _clock)
            self._clock = clock
        self.job_id = job.job_id
        self.worker_id = worker_id
        self.work_dir = str(work_dir)
        self._cancel_event = None  # created when a handler first asks for it
        self._cancelled = False
        self.cancel_reason = None
        self.deadline = deadline  # a value of the context's clock (time.monotonic()), or None
        self.allowed_paths = allowed_paths  # None: everything allowed
        self.protected_paths = tuple(protected_paths)
        self._metrics = metrics
        self._progress_sink = progress_sink  # callable(job_id, event): the transport's progress store
        self._children = set()
        self._registry = children  # orphans.ChildRegistry: children recorded for a crash's clean-up
        self._lock = threading.Lock()
        self._seq = 0
        self.disk_read_bytes = 0
        self.disk_write_bytes = 0

    # -- cancellation -------------------------------------------------------------------
    @property
    def cancel_event(self):
        """A threading.Event set when the job is cancelled (to wait on instead of sleeping)."""
        event = self._cancel_event
        if event is None:
            with self._lock:
                if self._cancel_event is None:
                    self._cancel_event = threading.Event()
                    if self._cancelled:
                        self._cancel_event.set()
                event = self._cancel_event
        return event

    @property
    def cancelled(self):
        return self._cancelled

    def cancel(self, reason):
        """Set the cancellation event and stop every child process (called by the worker)."""
        with self._lock:
            if self.cancel_reason is None:
                self.cancel_reason = reason
            self._cancelled = True
            event = self._cancel_event
            children = list(self._children)
        if event is not None:
            event.set()
        for child in children:
            child.kill()

    def check_cancelled(self):
        """Raise JobCancelled when the job was cancelled; call it between units of work."""
        if self._cancelled:
            raise JobCancelled(self.cancel_reason or "cancelled")

    def remaining(self):
        """Seconds left before the job's timeout, or None when it has none."""
        return None if self.deadline is None else max(0.0, self.deadline - self._clock())

    # -- progress -----------------------------------------------------------------------
    def progress(self, phase, percent=None, message=""):
        """Log a progress event and hand it to the transport's progress store (the sink)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        log.log(self._progress_level(phase, percent), "job %s: [%s] %s%s", self.job_id, phase,
                "" if percent is None else f"{percent:.0f}% ", message)
        if self._progress_sink is None:
            return
        event = {"job_id": self.job_id, "timestamp": stamp(),
                 "sequence": seq, "phase": phase, "message": message}
        if percent is not None:
            event["progress_percent"] = round(float(percent), 1)
        self._progress_sink(self.job_id, event)

    #: progress inside a phase is logged at INFO at most every this many percent and seconds
    PROGRESS_LOG_PERCENT, PROGRESS_LOG_SECONDS = 10.0, 30.0
    #: monotonic seconds: deadlines and the progress log's pace (a constructor argument replaces it)
    _clock = staticmethod(time.monotonic)
    _logged = (None, None, 0.0)  # phase, percent and time of the last progress logged at INFO

    def _progress_level(self, phase, percent):
        """INFO for a new phase, its end and a step of 10 % and 30 s; DEBUG for the rest
        (every event still goes to the progress file)."""
        last_phase, last_percent, last_time = self._logged
        now = self._clock()
        if (phase != last_phase or percent is None or percent >= 100 or last_percent is None
                or (percent - last_percent >= self.PROGRESS_LOG_PERCENT
                    and now - last_time >= self.PROGRESS_LOG_SECONDS)):
            self._logged = (phase, percent, now)
            return logging.INFO
        return logging.DEBUG

    # -- child processes ----------------------------------------------------------------
    def run(self, argv, *, env=None, cwd=None, on_stdout_line=None, on_stderr_line=None):
        """Run argv in its own process group under the job's timeout.

        Returns a CompletedProcess (bytes stdout/stderr).  Raises JobCancelled when the job
        is cancelled or times out meanwhile; the child and all its descendants are killed.
        """
        self.check_cancelled()
        child = ChildProcess(argv, env=env, cwd=cwd, on_stdout_line=on_stdout_line,
                             on_stderr_line=on_stderr_line, job_id=self.job_id)
        with self._lock:
            self._children.add(child)
        if self._registry is not None:
            self._registry.add(child.pid, self.job_id)
        log.debug("job %s: started pid %s: %s", self.job_id, child.pid, " ".join(map(str, argv)))
        try:
            if self.cancel_event.is_set():  # cancelled between check and registration
                child.kill()
            rc = child.wait(self.cancel_event)
        finally:
            with self._lock:
                self._children.discard(child)
            if self._registry is not None:
                self._registry.remove(child.pid)
        if rc is None or self.cancel_event.is_set():
            raise JobCancelled(self.cancel_reason or "cancelled")
        return subprocess.CompletedProcess(child.argv, rc, child.stdout, child.stderr)

    @property
    def child_pids(self):
        with self._lock:
            return [c.pid for c in self._children]

    # -- metrics ------------------------------------------------------------------------
    def record_checksum_verification(self, status):
        """Count one checksum verification: 'success', 'failure' or 'skipped'."""
        self._metrics.checksum(status)

    def record_disk_io(self, read_bytes=0, write_bytes=0):
        """Add bytes read from / written to disk images."""
        self.disk_read_bytes += read_bytes
        self.disk_write_bytes += write_bytes
        self._metrics.disk_io(read_bytes, write_bytes)

    # -- paths --------------------------------------------------------------------------
    def check_path(self, path, field, *, for_output=False):
        """Resolve path; reject it (PATH_NOT_ALLOWED) outside --allow-path or on worker files."""
        return _check_path(path, field, allowed=self.allowed_paths,
                          protected=self.protected_paths if for_output else ())
