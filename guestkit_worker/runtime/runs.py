"""The run record (one job from its delivery to its stored outcome) and the table of runs and
counters the worker's threads share."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..job.states import JobState, check_transition


class Run:
    """One delivered job.  ``stop_reason``/``stop_at``: why and when (monotonic) the worker asked
    its handler to stop (timeout, requested, shutdown, lease_lost); ``finalized``: its outcome
    is decided (by the job thread, or by the watchdog for a handler that ignores cancellation)."""

    __slots__ = ("delivery", "job", "handler", "ctx", "state", "started_mono", "started_at", "lock",
                 "finalized", "stop_reason", "stop_at", "operation_label", "thread", "key_held", "detached")

    def __init__(self, delivery: Any) -> None:
        self.delivery = delivery
        self.job = self.handler = self.ctx = None
        self.state = JobState.ASSIGNED
        self.started_mono = time.monotonic()
        self.started_at = time.time()
        self.lock = threading.Lock()
        self.finalized = False
        self.stop_reason: str | None = None
        self.stop_at: float | None = None
        self.operation_label = "unknown"
        self.thread: str | None = None
        self.key_held = False  # this run holds its idempotency key's reservation
        self.detached = False  # its outcome was written without its thread (which stays busy)

    def to(self, new: JobState) -> None:
        self.state = check_transition(self.state, new)

    @property
    def job_id(self) -> str:
        return self.job.job_id if self.job else (self.delivery.job_id or self.delivery.name)

    def finalize(self) -> bool:
        """Claim the right to decide the outcome; False when someone else already did."""
        with self.lock:
            if self.finalized:
                return False
            self.finalized = True
            return True


class RunTable:
    """Running jobs by id, deliveries in hand, and outcome counts (one lock for all)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.lock = threading.Lock()
        # a slot freed (notified only then: it wakes the consumer)
        self.changed = threading.Condition(self.lock)
        self.running: dict = {}          # job_id -> Run whose handler runs
        self.in_hand = 0                 # deliveries handed to job threads and not done with
        self.not_started = 0             # of which not started yet (queue depth counts them)
        self.detached = 0                # of which done with, their threads stuck in a handler
        self.counts: dict = {}           # outcome status -> jobs

    def free_slots(self) -> int:
        with self.lock:
            return self.slots - self.in_hand

    def take(self, n: int) -> None:
        with self.lock:
            self.in_hand += n
            self.not_started += n

    def started(self) -> None:
        with self.lock:
            self.not_started -= 1

    def done(self, started: bool, detached: bool = False, replaced: bool = False) -> None:
        """A delivery is done with; replaced: its thread took the next one itself, which keeps
        the slot (nobody is woken)."""
        with self.lock:
            if not started:
                self.not_started -= 1
            if detached:
                self.detached -= 1
            if replaced:
                self.not_started += 1
                return
            self.in_hand -= 1
            self.changed.notify_all()

    def wake(self) -> None:
        """Wake whoever waits for a change (the consumer of a one-shot run)."""
        with self.lock:
            self.changed.notify_all()

    def detach(self) -> None:
        """A run's outcome was written while its thread is stuck in the handler."""
        with self.lock:
            self.detached += 1
            self.changed.notify_all()

    def busy(self) -> int:
        """Deliveries in hand whose outcome is not decided yet."""
        with self.lock:
            return self.in_hand - self.detached

    def add(self, run: Run) -> bool:
        """Register a running job; False when a job of that id already runs here."""
        with self.lock:
            if run.job.job_id in self.running:
                return False
            self.running[run.job.job_id] = run
            return True

    def remove(self, run: Run) -> None:
        with self.lock:
            if self.running.get(run.job.job_id) is run:
                del self.running[run.job.job_id]

    def runs(self) -> list:
        with self.lock:
            return list(self.running.values())

    def running_starts(self) -> list:
        """time.monotonic() start times of the handlers running now (for the metrics)."""
        return [r.started_mono for r in self.runs() if r.ctx is not None]

    def active(self) -> int:
        return len(self.running)

    def count(self, status: str) -> None:
        with self.lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    def outcomes(self) -> dict:
        with self.lock:
            return dict(self.counts)
