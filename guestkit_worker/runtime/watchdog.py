"""The watchdog: stops a job at its deadline and, when its handler ignores that, has its outcome
written anyway after a grace period (the thread stays counted as busy until it returns).

Time is injected (``clock``), and :meth:`Watchdog.tick` does one pass, so tests drive it
without real sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Callable

from ..system.procs import KILL_GRACE_SECONDS

#: After a stop (timeout, cancel request, shutdown), how long a handler may take to return
#: before its outcome is written without it.
ABANDON_GRACE_SECONDS = KILL_GRACE_SECONDS + 2.0


class Watchdog:
    def __init__(self, runs: Callable[[], Iterable[Any]], stop: Callable[[Any, str], None],
                 abandon: Callable[[Any], None], *, clock: Callable[[], float] = time.monotonic,
                 grace: float = ABANDON_GRACE_SECONDS) -> None:
        self._runs, self._stop_run, self._abandon = runs, stop, abandon
        self._clock, self.grace = clock, grace
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._due = 0.0  # when the thread looks next (0: it is looking now)
        self._thread = None

    def tick(self) -> float:
        """One pass over the running jobs; returns when the next pass is due."""
        now = self._clock()
        nearest = now + 1.0
        for run in self._runs():
            ctx = run.ctx
            if ctx is None or run.finalized:
                continue
            if run.stop_at is None:
                if ctx.deadline is not None and now >= ctx.deadline:
                    self._stop_run(run, "timeout")
                elif ctx.deadline is not None:
                    nearest = min(nearest, ctx.deadline)
            if run.stop_at is not None:
                if now >= run.stop_at + self.grace:
                    self._abandon(run)
                else:
                    nearest = min(nearest, run.stop_at + self.grace)
        return nearest

    def notify(self, deadline: float) -> None:
        """A job started with this deadline: wake only when it comes before the next look."""
        if deadline < self._due or not self._due:
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _loop(self) -> None:
        import logging
        while not self._stopped.is_set():
            self._due = 0.0  # runs added from now on wake us
            try:
                nearest = self.tick()
            except Exception:  # the watchdog must outlive any bug in one pass
                logging.getLogger(__name__).exception("watchdog pass failed; trying again")
                nearest = self._clock() + 1.0
            self._due = nearest
            self._wake.wait(max(0.01, nearest - self._clock()))
            self._wake.clear()
