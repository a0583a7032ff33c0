"""The job's statuses, in one place: the strings every document, metric label, API answer and
command-line choice uses, and the states one job goes through inside a worker with the
transitions allowed between them."""

import enum

from .errors import InvalidTransition

#: How a handler's run ends: the ``status`` of a result document.
RESULT_STATUSES = ("completed", "failed", "timeout", "cancelled")
#: Every status a job can be seen in (the API's ``status`` and ``list?status=``, ``status``,
#: ``list --status``): waiting, running, a result's, or refused at admission.
JOB_STATUSES = ("pending", "running") + RESULT_STATUSES + ("rejected",)
#: Statuses after which nothing more happens to a job.
FINAL_STATUSES = frozenset(RESULT_STATUSES + ("rejected",))
#: How one delivery ends (metrics' ``status`` label, ``--once`` exit status): a result's status,
#: ``rejected`` (refused at admission) or ``duplicate`` (an idempotency key that had already
#: completed).
OUTCOME_STATUSES = RESULT_STATUSES + ("rejected", "duplicate")


class JobState(enum.Enum):
    """Where one delivery is inside this worker (its values are the statuses above, and
    ``assigned``: delivered, not started)."""

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


def check_transition(old: JobState, new: JobState) -> JobState:
    """Return new, or raise InvalidTransition (a bug in the worker, never bad input)."""
    if new not in _ALLOWED.get(old, ()):
        raise InvalidTransition(f"job state cannot go from {old.value} to {new.value}")
    return new
