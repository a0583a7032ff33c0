"""The file transport: a jobs directory and a results directory shared by any number of
workers on one host or a shared file system (layout in :mod:`.layout`).

Its parts, one module each: :mod:`.queue` (listing, claiming, retry, release, archive),
:mod:`.jobfile` (reading a claimed job file safely), :mod:`.liveness` (the per-worker lock and
the reclaim of dead workers' jobs), :mod:`.results` (results, progress, idempotency, the group
commit, health) and :mod:`.index` (submit, status, listing and cancel by job id).
"""

from __future__ import annotations

import os

from ...system.tempfiles import sweep_temp_files
from ..base import Transport
from .index import FileIndex
from .layout import Layout
from .liveness import FileLiveness
from .queue import FileDelivery, FileQueue
from .results import FileResults

__all__ = ["FileTransport", "FileDelivery"]


class FileTransport(FileQueue, FileLiveness, FileResults, FileIndex, Transport):
    """Jobs from jobs_dir, results into results_dir, as worker_id.

    durable: fsync results, retries and idempotency records (off only for tests and benches);
    once: fetch only the jobs present at the first fetch or depth (after open's recovery) and
    their retries, then report none;
    poll_interval: how often fetch() lists the jobs directory while it waits."""

    lease_seconds: float | None = None  # liveness is the flock, not a lease

    def __init__(self, jobs_dir: str, results_dir: str, worker_id: str, *, max_job_bytes: int,
                 durable: bool = True, once: bool = False, poll_interval: float = 1.0) -> None:
        self.layout = Layout(jobs_dir, results_dir, worker_id)
        self.worker_id = worker_id
        self.max_job_bytes = max_job_bytes
        self.durable = durable
        self.once = once
        self.poll_interval = poll_interval
        self._init_queue()
        self._init_results()

    @property
    def protected_paths(self) -> tuple:
        return (self.layout.jobs_dir, self.layout.results_dir)

    @property
    def local_dirs(self) -> dict:
        return {"results": self.layout.results_dir, "jobs": self.layout.jobs_dir}

    def describe(self) -> str:
        return f"files: jobs {self.layout.jobs_dir}, results {self.layout.results_dir}"

    def open(self) -> None:
        """Create the directory layout, take this worker's liveness lock (a
        live worker has the same id: ConfigError)."""
        L = self.layout
        for d in (L.jobs_dir, L.results_dir) + L.inner_dirs():
            L.make_dir(d)
        self._take_lock()
        self._results_fd = os.open(L.results_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        with self._ids_lock:
            if self._ids_fd is None:
                self._open_job_ids()

    def close(self) -> None:
        self._drop_lock()
        self._close_job_ids()
        if self._results_fd is not None:
            os.close(self._results_fd)
            self._results_fd = None

    def maintain(self) -> None:
        """Remove temp files interrupted writes left behind (see guestkit_worker.system.tempfiles)."""
        sweep_temp_files(self.layout.temp_dirs())
