"""The stream entries this worker holds (:class:`HeldEntries`): what is renewed, what reclaim
leaves alone, and where a delivery found taken over is reported."""

from __future__ import annotations

import logging
import threading

from ..base import Delivery, TransportObserver

log = logging.getLogger(__name__)


class HeldEntries:
    """Entry id -> delivery, for every delivery this worker holds until it is acknowledged,
    given back or found taken over; ``observer`` is told of lost leases and dead letters."""

    def __init__(self, observer: TransportObserver) -> None:
        self.observer = observer
        self._held: dict[str, Delivery] = {}
        self._lock = threading.Lock()

    def hold(self, delivery: Delivery) -> None:
        with self._lock:
            self._held[delivery.name] = delivery

    def forget(self, delivery: Delivery) -> None:
        with self._lock:
            self._held.pop(delivery.name, None)

    def holds(self, entry: str) -> bool:
        with self._lock:
            return entry in self._held

    def entries(self) -> list:
        """The ids of the entries held now."""
        with self._lock:
            return list(self._held)

    def stale(self, now: float, age: float) -> list:
        """The deliveries held, not lost, and not renewed for ``age`` seconds."""
        with self._lock:
            return [d for d in self._held.values() if not d.lost and now - d.renewed >= age]

    def lease_lost(self, delivery: Delivery) -> None:
        """Another worker owns the delivery now: forget it, and report it once."""
        self.forget(delivery)
        if hasattr(delivery, "lost"):
            if delivery.lost:
                return  # counted once
            delivery.lost = True
        self.observer.lease_lost()
        log.warning("stream entry %s (job %s): this worker no longer owns it (lease lost)", delivery.name,
                    delivery.job_id)

    def dead_lettered(self, reason: str) -> None:
        self.observer.dead_lettered(reason)
