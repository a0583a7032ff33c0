"""The committer: one thread that stores outcomes in batches through Transport.commit, so that
many jobs share one flush to disk (group commit) while job threads go on with their next job.

An outcome is handed over with :meth:`Committer.put`.  Once stored, ``on_stored(run, outcome)``
is called.  When the transport could not store it (disk full, store unreachable; its delivery
is still held), ``on_error(run, outcome)`` is called and the same outcome is committed again
after a growing pause (RETRY_DELAYS): the handler is never run again for it.  Only when the
pauses are used up, or the committer closes, ``on_failed(run, outcome)`` gives it up (the
worker then gives the delivery back to the queue).  After :meth:`close`, outcomes are
committed in the caller's thread, once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

log = logging.getLogger(__name__)

#: Outcomes waiting for the committer, per job thread, before job threads wait for it.
COMMIT_BACKLOG_PER_THREAD = 4
#: Pauses (seconds) before an outcome that could not be stored is committed again.
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)

Callback = Callable[[Any, Any], None]


class Committer:
    def __init__(self, commit: Callable[[Sequence[Any]], None], on_stored: Callback, on_failed: Callback, *,
                 backlog: int, on_error: Callback | None = None, on_idle: Callable[[], None] | None = None,
                 retry_delays: Sequence[float] = RETRY_DELAYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._commit = commit
        self._on_stored, self._on_failed, self._on_idle = on_stored, on_failed, on_idle
        self._on_error = on_error or (lambda run, o: None)
        self._delays, self._clock = tuple(retry_delays), clock
        self._queue: queue.Queue = queue.Queue(maxsize=max(8, backlog))
        self._later: list = []             # heap of (due, n, tries, run, outcome) to commit again
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Outcomes handed over and not stored (or given up) yet, waiting retries included."""
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
            self._queue.put((run, outcome, 0))
        else:
            self._store([(run, outcome, len(self._delays))])

    def close(self, timeout: float) -> bool:
        """Store what was handed over (outcomes waiting for a retry get one last try), then
        commit in callers' threads; False when the committer did not finish within timeout."""
        with self._lock:
            self._closed = True
        if self._thread is None:
            return True
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _due(self) -> list:
        """Outcomes whose pause is over (all of them once closed), as batch items."""
        now, items = self._clock(), []
        while self._later and (self._closed or self._later[0][0] <= now):
            _, _, tries, run, outcome = heapq.heappop(self._later)
            outcome.error = None
            items.append((run, outcome, tries))
        return items

    def _loop(self) -> None:
        limit = self._queue.maxsize
        while True:
            # block until an outcome or close()'s None arrives, or the next retry is due
            wait = None if not self._later else max(0.0, min(0.5, self._later[0][0] - self._clock()))
            try:
                batch = [self._queue.get(timeout=wait)]
            except queue.Empty:
                batch = []
            while batch and len(batch) < limit:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [b for b in batch if b is not None] + self._due()  # None: a wake-up at close
            done_with = self._store(items) if items else 0
            with self._lock:
                self._pending -= done_with
                done = self._closed and self._pending == 0 and self._queue.empty()
            if done_with and self._on_idle is not None and self._pending == 0:
                self._on_idle()
            if done:
                return

    def _store(self, items: list) -> int:
        """Commit a batch; then each outcome's callback.  Returns how many outcomes are done with
        (stored or given up); the others wait for a retry.  Nothing here may kill the thread."""
        try:
            self._commit([o for _, o, _ in items])
        except Exception as exc:  # a transport bug: every outcome of the batch counts as unstored
            log.exception("storing %d outcome(s) failed unexpectedly", len(items))
            for _, o, _ in items:
                if o.error is None:
                    o.error = exc
        done_with = 0
        for run, o, tries in items:
            try:
                if o.error is None:
                    self._on_stored(run, o)
                elif tries < len(self._delays) and not self._closed and isinstance(o.error, OSError):
                    self._on_error(run, o)
                    heapq.heappush(self._later, (self._clock() + self._delays[tries], next(self._order),
                                                 tries + 1, run, o))
                    continue
                else:
                    self._on_error(run, o)
                    self._on_failed(run, o)
            except Exception:  # one job's trouble must not leave the rest of the batch unhandled
                log.exception("job %s: handling its stored outcome failed", getattr(run, "job_id", "-"))
            done_with += 1
        return done_with
