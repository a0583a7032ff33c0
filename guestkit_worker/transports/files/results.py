"""The result store of the file transport: result files, progress files and the wake-up of
waiters on each commit (the group commit itself, which also archives job files, is
:meth:`.transport.FileTransport.commit`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping

from ...job.states import FINAL_STATUSES
from ...system import atomic
from .layout import Layout, read_json, result_bytes

log = logging.getLogger(__name__)


class FileResultStore:
    """results/JOB_ID-result.json and results/JOB_ID-progress.jsonl of one results directory.

    durable: fsync result files and the directory (off only for tests and benches)."""

    def __init__(self, layout: Layout, *, durable: bool) -> None:
        self.layout, self.durable = layout, durable
        self._dir_fd: int | None = None          # kept open for the group commit's directory fsync
        self._committed = threading.Condition()
        self._generation = 0                     # bumped by every commit (wait_result wakes on it)

    def open(self) -> None:
        """Open the results directory once, for :meth:`sync_dir`."""
        if self._dir_fd is None:
            self._dir_fd = os.open(self.layout.results_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    # -- results ------------------------------------------------------------------------
    def encode_result(self, result: Mapping) -> bytes:
        return result_bytes(result)

    def get_result(self, job_id: str) -> dict | None:
        """The stored result; ValueError when the file holds JSON that is not an object (never
        written by a worker: judging it would be guessing)."""
        doc = read_json(self.layout.result_path(job_id))
        if doc is not None and not isinstance(doc, dict):
            raise ValueError(f"the stored result of {job_id} is not a JSON object")
        return doc

    def result_or_none(self, job_id: str) -> dict | None:
        """The stored result, or None when there is none or it is not a JSON object."""
        try:
            return self.get_result(job_id)
        except ValueError:
            return None

    def write_result(self, job_id: str, data: bytes) -> None:
        """Write a result file (fsynced when durable, the directory not: see :meth:`sync_dir`)."""
        atomic.write_bytes(self.layout.result_path(job_id), data, durable=self.durable, sync_dir=False)

    def sync_dir(self) -> None:
        """Make the result files written since the last call durable (one directory fsync)."""
        if not self.durable:
            return
        if self._dir_fd is not None:
            os.fsync(self._dir_fd)
        else:
            atomic.fsync_dir(self.layout.results_dir)

    def committed(self) -> None:
        """A commit ended: wake :meth:`wait_result` callers."""
        with self._committed:
            self._generation += 1
            self._committed.notify_all()

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        """Woken by a commit in this process; results stored by other workers are seen within
        half a second."""
        end = time.monotonic() + timeout
        while True:
            with self._committed:
                generation = self._generation
            result = self.result_or_none(job_id)
            left = end - time.monotonic()
            if (result is not None and result.get("status") in FINAL_STATUSES) or left <= 0:
                return result
            with self._committed:
                if self._generation == generation:
                    self._committed.wait(min(0.5, left))

    # -- progress -----------------------------------------------------------------------
    def append_progress(self, job_id: str, event: Mapping) -> None:
        path = self.layout.progress_path(job_id)
        try:
            atomic.append_line(path, json.dumps(event))
        except OSError as exc:
            log.warning("job %s: cannot append progress to %s: %s", job_id, path, exc)

    def read_progress(self, job_id: str, after: int = 0) -> list:
        try:
            fd = os.open(self.layout.progress_path(job_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return []
        events = []
        for line in lines[after:]:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return events


def probe_dir(path: str, readable: bool) -> tuple:
    """(ok, detail) after really listing and creating a file in path (access() lies for root).
    The probe file gets an unpredictable name, created exclusively (O_EXCL never follows a
    link), so nothing planted in the directory is followed or truncated."""
    try:
        if readable:
            os.listdir(path)
        fd, probe = tempfile.mkstemp(prefix=".health-", suffix=".probe", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return False, exc.strerror or str(exc)
    return True, "listed and written" if readable else "written"
