"""The committer: one thread that stores outcomes in batches through Transport.commit, so that
many jobs share one flush to disk (group commit) while job threads go on with their next job.

An outcome is handed over with :meth:`Committer.put`; once stored, ``on_stored(run, outcome)``
is called, or ``on_failed(run, outcome)`` when the transport could not store it (its delivery
is still held).  After :meth:`close`, outcomes are committed in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger(__name__)

#: Outcomes waiting for the committer, per job thread, before job threads wait for it.
COMMIT_BACKLOG_PER_THREAD = 4

Callback = Callable[[Any, Any], None]


class Committer:
    def __init__(self, commit: Callable[[Sequence[Any]], None], on_stored: Callback, on_failed: Callback, *,
                 backlog: int, on_idle: Optional[Callable[[], None]] = None) -> None:
        self._commit = commit
        self._on_stored, self._on_failed, self._on_idle = on_stored, on_failed, on_idle
        self._queue: queue.Queue = queue.Queue(maxsize=max(8, backlog))
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0
        self._thread: Optional[threading.Thread] = None

    @property
    def pending(self) -> int:
        """Outcomes handed over and not stored yet."""
        return self._pending

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="committer", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._closed

    def put(self, run: Any, outcome: Any) -> None:
        """Store outcome: by the committer thread while it runs, else right here."""
        with self._lock:
            queued = self._thread is not None and not self._closed
            if queued:
                self._pending += 1
        if queued:
            self._queue.put((run, outcome))
        else:
            self._store([(run, outcome)])

    def close(self, timeout: float) -> bool:
        """Store what was handed over, then commit in callers' threads; False when the
        committer did not finish within timeout."""
        with self._lock:
            self._closed = True
        if self._thread is None:
            return True
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        limit = self._queue.maxsize
        while True:
            try:
                batch = [self._queue.get(timeout=0.5)]
            except queue.Empty:
                batch = []
            while batch and len(batch) < limit:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [b for b in batch if b is not None]  # None: a wake-up at close
            if items:
                self._store(items)
            with self._lock:
                self._pending -= len(items)
                done = self._closed and self._pending == 0
            if items and self._on_idle is not None and self._pending == 0:
                self._on_idle()
            if done:
                return

    def _store(self, items: list) -> None:
        """Commit a batch; then each outcome's callback.  Nothing here may kill the thread."""
        try:
            self._commit([o for _, o in items])
        except Exception as exc:  # a transport bug: every outcome of the batch counts as unstored
            log.exception("storing %d outcome(s) failed unexpectedly", len(items))
            for _, o in items:
                if o.error is None:
                    o.error = exc
        for run, o in items:
            try:
                (self._on_failed if o.error is not None else self._on_stored)(run, o)
            except Exception:  # one job's trouble must not leave the rest of the batch unhandled
                log.exception("job %s: handling its stored outcome failed", getattr(run, "job_id", "-"))
