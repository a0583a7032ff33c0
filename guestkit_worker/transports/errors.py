"""The errors a transport raises to its callers (re-exported by :mod:`.base`).

Storage trouble (disk full, permission, a queue server gone) is :class:`TransportUnavailable`
(or ``OSError`` for local files): the caller backs off and tries again, nothing is lost.
"""

from __future__ import annotations

from ..job.errors import GuestkitWorkerError


class TransportUnavailable(GuestkitWorkerError):
    """The queue or store cannot be reached or written right now (retry later; nothing is lost)."""


class OutcomeUnknown(TransportUnavailable):
    """A change was sent to the queue or store, but its answer never came back (a timeout, a
    connection lost after sending): it may or may not have been made.  Submitting the same
    document again is safe: one job id and document never make a second job."""


class InvalidPageToken(ValueError):
    """A ``list_jobs`` page_token that this transport did not make.  The token arrives from a
    client as is, so its message is fixed: one line that never repeats the token."""

    def __init__(self) -> None:
        super().__init__("not a token from a previous page of this listing; leave it out to start "
                         "from the first page")


class JobTooLarge(GuestkitWorkerError):
    """A job document whose stored form would be over the workers' --max-job-size: it is not
    queued (a worker would refuse it unread, and the job would end without a result)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"the job document is {size} bytes as stored, larger than the limit of {limit} "
                         "bytes (--max-job-size); it was not queued: make it smaller or raise the limit")


class StopRequested(GuestkitWorkerError):
    """The worker was asked to stop while the transport waited for its server at start (or
    for a worker id to be free): nothing was taken, the worker ends as a clean stop."""


class LeaseLost(GuestkitWorkerError):
    """This worker no longer owns a delivery (another worker reclaimed it): its outcome must not
    be stored and its handler should stop."""
