"""Cancel requests for running jobs in the file transport: an empty file jobs/.cancel/JOB_ID,
seen by the worker that runs the job (:meth:`CancelMarkers.requested`) and removed once that
job's outcome is committed."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable

from .layout import Layout


class CancelMarkers:
    """The markers of one jobs directory, as one worker asks for and settles them."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._seen: set = set()            # job ids whose request this worker reported
        self._lock = threading.Lock()

    def request(self, job_id: str) -> None:
        """Ask the worker running job_id to stop it (idempotent)."""
        marker = os.path.join(self.layout.cancel_dir, job_id)
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            os.close(fd)
        except FileExistsError:
            pass

    def requested(self, job_ids: Iterable[str]) -> set:
        """The job ids among these whose cancel was requested (remembered for :meth:`settled`)."""
        d = self.layout.cancel_dir
        asked = {j for j in job_ids if os.path.lexists(os.path.join(d, j))}
        with self._lock:
            self._seen |= asked
        return asked

    def settled(self, job_id: str) -> None:
        """The job's outcome is committed: remove its marker, if this worker reported one."""
        with self._lock:
            if job_id not in self._seen:
                return
            self._seen.discard(job_id)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.layout.cancel_dir, job_id))
