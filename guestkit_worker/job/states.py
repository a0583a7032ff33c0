"""Job states and the transitions allowed between them."""

import enum

from .errors import InvalidTransition


class JobState(enum.Enum):
    PENDING = "pending"      # waiting in the queue
    ASSIGNED = "assigned"    # delivered to this worker
    RUNNING = "running"      # handler started
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


_ALLOWED = {
    JobState.PENDING: {JobState.ASSIGNED},
    JobState.ASSIGNED: {JobState.RUNNING, JobState.FAILED, JobState.COMPLETED, JobState.PENDING},
    JobState.RUNNING: {JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT, JobState.CANCELLED},
}


def check_transition(old, new):
    """Return new, or raise InvalidTransition (a bug in the worker, never bad input)."""
    if new not in _ALLOWED.get(old, ()):
        raise InvalidTransition(f"job state cannot go from {old.value} to {new.value}")
    return new
