"""The lease keeper: for transports whose deliveries are leased (Redis), renews the lease of
every running delivery every lease/4 seconds from a thread that does nothing else (so a busy
job thread, or native code holding the GIL for a while, does not starve it), then lets the
transport renew what else it holds (``renew_held``: outcomes waiting to be stored).  A
renewal answered False means another worker owns the job now: the run is stopped and its
outcome dropped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Callable

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, transport: Any, runs: Callable[[], Iterable[Any]], stop: Callable[[Any, str], None],
                 lease_seconds: float) -> None:
        self.transport, self._runs, self._stop_run = transport, runs, stop
        self.interval = max(0.05, lease_seconds / 4)
        self._stopped = threading.Event()
        self._thread = None

    def renew_all(self) -> None:
        for run in self._runs():
            if run.finalized or run.stop_reason == "lease_lost":
                continue
            try:
                kept = self.transport.extend_lease(run.delivery)
            except Exception:  # the queue unreachable: keep trying until the lease runs out
                log.exception("job %s: renewing its lease failed", run.job_id)
                continue
            if not kept:
                log.warning("job %s: lease lost to another worker; stopping it", run.job_id)
                self._stop_run(run, "lease_lost")
        renew_held = getattr(self.transport, "renew_held", None)
        if renew_held is not None:  # entries whose outcome waits to be stored, and the like
            renew_held()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.renew_all()
            except Exception:
                log.exception("lease keeper pass failed; trying again")
