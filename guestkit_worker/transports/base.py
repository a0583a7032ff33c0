"""The two seams between the worker and the outside world: where jobs come from (a
:class:`JobQueue`) and where results go (a :class:`ResultStore`).  A transport implements
both in one object (:class:`Transport`), because a crash-safe outcome needs the result stored
and the delivery acknowledged in one step (one Lua script for Redis; result file, directory
flush, then the job file's archive for files).

Who owns what:

* the **worker** (``guestkit_worker.runtime``) owns policy: admission, routing, the retry
  decision, attempts, timeouts, ``WORKER_CRASHED``, cancellation, and what to do with each
  delivery a dead worker left (:data:`ReclaimDecision`);
* **``guestkit_worker.job.outcomes``** builds every result, error and reason document, for
  the worker and for the API and command line, which cancel waiting jobs without a worker;
* the **queue** owns delivery, leases, orphan detection and atomic requeue;
* the **store** owns durability, progress events and the atomicity of idempotency
  reservations.

A transport therefore never builds a result, error or reason document and never judges a job
document: it stores the documents it is handed (:class:`Outcome`, the builder passed to
:meth:`Transport.cancel`, the reason :data:`UnrecoverableReason` returns), takes verdicts as
arguments (``not_for_me`` and ``other_pool`` of :meth:`JobQueue.release`, the attempt in the
document :meth:`JobQueue.retry` queues), and reads the facts it indexes (job id, operation,
attempt, cancellable) through the job layer (``job.protocol.peek_job_id``,
``job.facts.job_facts``).  What only it sees (reclaims, lost leases, dead letters, its own
errors) it reports to the :class:`TransportObserver` it is given.

A :class:`Delivery` is an opaque token: the worker reads its attributes for logs and
decisions, and hands it back to the transport that made it; it never looks inside.

Errors: storage trouble (disk full, permission, a queue server gone) raises
:class:`TransportUnavailable` (or ``OSError`` for local files); a job document that cannot be
read as JSON raises :class:`guestkit_worker.job.errors.JobFileError` from :meth:`JobQueue.read`.
The errors live in :mod:`.errors` and the records in :mod:`.records`; both are re-exported here.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from ..job.outcomes import QueuedJob
from ..job.states import FINAL_STATUSES
from .errors import (
    InvalidPageToken,
    JobTooLarge,
    LeaseLost,
    OutcomeUnknown,
    StopRequested,
    TransportUnavailable,
)
from .records import (
    DeadLetter,
    DeadPage,
    DeadRequeue,
    Delivery,
    JobStatus,
    Outcome,
    Page,
    Reservation,
    SubmitReceipt,
    compact_job_bytes,
    job_bytes,
)

__all__ = [
    "CancelledDocuments", "DeadLetter", "DeadPage", "DeadRequeue", "Delivery", "InvalidPageToken", "JobQueue",
    "JobStatus", "JobTooLarge", "LeaseLost", "Outcome", "OutcomeUnknown", "Page", "QueuedJob",
    "ReclaimDecision", "Reservation", "ResultStore", "StopRequested", "SubmitReceipt", "Transport",
    "TransportObserver", "TransportUnavailable", "UnrecoverableReason", "compact_job_bytes", "job_bytes",
]


#: decide(delivery, dead_worker_id): the worker's decision for each delivery JobQueue.reclaim
#: took back; it disposes of the delivery (commit, retry or release) with documents it builds
ReclaimDecision = Callable[[Delivery, str], None]

#: unrecoverable(delivery, dead_worker_id, error) -> reason document: built by the worker for a
#: delivery whose decision raised; the transport keeps it as it disposes of the delivery
UnrecoverableReason = Callable[[Delivery, str, BaseException], dict]

#: cancelled(queued_job) -> (result, reason): the documents of a waiting job cancelled on
#: request (guestkit_worker.job.outcomes.cancelled_before_start); the transport stores them
CancelledDocuments = Callable[[QueuedJob], tuple[dict, dict]]


class TransportObserver:
    """Where a transport reports what only it sees; every method does nothing here.  The
    worker passes its metrics (the same methods, counted), so a transport needs nothing of the
    layers above it."""

    def jobs_reclaimed(self, n: int = 1) -> None:
        """``n`` deliveries of dead workers were taken back."""

    def lease_lost(self) -> None:
        """A delivery this worker held was taken over by another worker (its outcome, retry or
        renewal was refused)."""

    def dead_lettered(self, reason: str) -> None:
        """A delivery was moved aside for good (``reason``: why)."""

    def set_queue_oldest_age(self, seconds: float) -> None:
        """The oldest waiting job has waited ``seconds``."""

    def transport_error(self, operation: str) -> None:
        """A call of ``operation`` (fetch, commit, ...) to the queue's server failed."""


class JobQueue(abc.ABC):
    """Delivery of job documents to workers."""

    #: True when :meth:`fetch` records each delivery as started in the same atomic step that
    #: delivers it (one round trip less per job; the worker fetches only as many jobs as it
    #: has free threads, so a fetched job starts at once unless it is refused or given back).
    #: A worker that dies holding such a delivery has used one of the job's attempts, even if
    #: its handler had not begun.  False: only :meth:`mark_started` records the start.
    starts_on_fetch = False

    #: a job thread that has finished a job may take its next one itself with ``fetch(1, 0)``
    #: (no hand-over through the consumer thread); True where that look is a cheap local one
    fetch_from_job_threads = False

    #: local directories a job's output must never be written into
    protected_paths: Sequence[str] = ()

    #: {role: path} of the local directories the transport writes, whose free space and inodes
    #: /health watches (the disk_space check; roles, never paths, appear in /health)
    local_dirs: Mapping[str, str] = {}

    #: seconds a delivery stays owned without :meth:`extend_lease`; None when liveness is not
    #: lease-based.  With a lease the worker renews every running delivery every lease/4 from
    #: a thread that does nothing else, and stops a run whose renewal returns False.
    lease_seconds: float | None = None

    #: set by the worker to its "asked to stop" test: a transport's waits (for its server at
    #: start, for a worker id to be free) end at once with StopRequested when it answers True
    stopping: Callable[[], bool] = staticmethod(lambda: False)

    #: None, or one line saying why this worker must stop now: another live process took its
    #: worker id (the worker then stops; the command line exits with its own status for it)
    identity_lost: str | None = None

    @abc.abstractmethod
    def open(self) -> None:
        """Connect or create what is needed and announce this worker as alive.

        Raises:
            ConfigError: a misconfiguration an operator must fix (exit 2), e.g. a live worker
                has this worker id.
            StopRequested: the worker was asked to stop while the transport waited.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release what open() took; idempotent.

        Deliveries still held stay for reclaim by other workers (a lease later where liveness
        is lease-based).  Afterwards :meth:`fetch` delivers nothing (an empty list) and
        :meth:`reclaim` takes nothing (0), so a thread still looking for work at shutdown is
        harmless.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """Say where jobs come from, for logs.

        Returns:
            One line, without secrets.
        """

    @abc.abstractmethod
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        """Queue a validated job document; never creates two jobs for one job id.

        Args:
            doc: the job document, validated by the caller.
            raw: the document's bytes as received, if any: what is queued (see
                :func:`job_bytes`).

        Returns:
            What was done: ``created``, ``exists`` (the same document before) or ``conflict``.

        Raises:
            JobTooLarge: the stored form is over the transport's max_job_bytes.
            TransportUnavailable: the queue cannot be written now (OutcomeUnknown: the
                answer was lost; submitting again is safe).
        """

    @abc.abstractmethod
    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        """Take waiting jobs for this worker (no prefetch beyond ``max_count``).

        Args:
            max_count: the most deliveries to take (the worker's free threads).
            timeout: seconds to wait for the first one.

        Returns:
            The deliveries taken; an empty list when none came (or the queue is closed).

        Raises:
            TransportUnavailable: the queue cannot be reached now.
        """

    @abc.abstractmethod
    def read(self, delivery: Delivery) -> bytes:
        """The delivered job document's bytes.

        Args:
            delivery: a delivery this worker holds.

        Returns:
            The bytes as queued (the worker decodes and judges them).

        Raises:
            JobFileError: they cannot be a job (not a regular file, over --max-job-size, ...).
        """

    @abc.abstractmethod
    def mark_started(self, delivery: Delivery) -> None:
        """Record durably that the job's handler is about to run (reclaim then counts it as an
        attempt) and set ``delivery.started``.

        Makes no round trip for a delivery whose start :meth:`fetch` recorded already
        (:attr:`starts_on_fetch`).  A delivery another worker owns by now is either marked
        lost (the next :meth:`extend_lease` answers False) or raises.

        Args:
            delivery: a delivery this worker holds, its ``job_id`` and ``attempt`` set.

        Raises:
            TransportUnavailable: the start cannot be recorded now.
        """

    def extend_lease(self, delivery: Delivery) -> bool:
        """Renew this worker's claim on a running delivery.

        Args:
            delivery: a delivery this worker holds.

        Returns:
            False when the lease was lost (another worker owns it now); True otherwise, and
            always where liveness is not lease-based (this default).
        """
        return True

    @abc.abstractmethod
    def retry(self, delivery: Delivery, doc: Mapping[str, Any]) -> None:
        """Atomically replace the delivered job by ``doc`` at the back of the queue.

        Args:
            delivery: a delivery this worker holds.
            doc: the same job as the worker rewrote it (``execution.attempt`` + 1): queued as
                it is.

        Raises:
            LeaseLost: another worker owns the delivery now; nothing was queued.
            TransportUnavailable: the queue cannot be written now.
        """

    def hold_job_id(self, delivery: Delivery) -> bool:
        """Atomically mark ``delivery.job_id`` as running in this delivery before its handler
        starts.

        The hold ends when the delivery is acknowledged, retried or released, and a hold of a
        worker that died is taken over.

        Args:
            delivery: a delivery this worker holds, its ``job_id`` set.

        Returns:
            False while another live delivery (another job file, another worker) holds the
            id: the worker then gives this one back unstarted.  This default answers True, for
            queues that never hand out two deliveries of one job id.
        """
        return True

    @abc.abstractmethod
    def release(self, delivery: Delivery, *, not_for_me: bool = False, other_pool: bool = False) -> None:
        """Give a delivery back unstarted and unchanged.

        Args:
            delivery: a delivery this worker holds.
            not_for_me: the worker's routing verdict: the job is meant for another pool or
                worker, so do not hand it to this worker again soon.
            other_pool: the worker's routing verdict: the job's routing excludes this worker's
                whole pool.  A queue that holds one pool's jobs only (Redis) can deliver it to
                no worker and moves it aside (a dead letter); a queue shared by all pools
                (files) treats it as ``not_for_me``.

        Raises:
            LeaseLost: (some transports) another worker owns the delivery now; others leave
                it alone silently.
            TransportUnavailable: the queue cannot be written now.
        """

    @abc.abstractmethod
    def reclaim(self, decide: ReclaimDecision, limit: int, *,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        """Take over deliveries of workers that died (or lost their lease) and hand each to
        the worker's decision.

        Each taken delivery is reported to the observer (``jobs_reclaimed``).  ``decide``
        disposes of it (commit, retry or release); an ``OSError`` from it leaves the delivery
        held for the next reclaim.  Any other exception must not stop the others: that
        delivery is disposed of as poison, keeping the reason ``unrecoverable`` builds
        (files: archived in failed/ with it; Redis and memory: a dead letter whose job state
        carries its error).

        Args:
            decide: the worker's decision, called with each delivery and its dead owner.
            limit: the most deliveries to take over in this call.
            unrecoverable: builds the reason document of a delivery whose decision raised;
                None: no reason is kept.

        Returns:
            How many deliveries were handed to ``decide``.

        Raises:
            TransportUnavailable: the queue cannot be reached now.
        """

    @abc.abstractmethod
    def depth(self) -> int:
        """Count the jobs waiting to be delivered to this worker's pool.

        Returns:
            The number waiting (not counting deliveries held by workers).

        Raises:
            TransportUnavailable: the queue cannot be reached now.
        """

    def cancel_requests(self, job_ids: Iterable[str]) -> set:
        """Find which running jobs were asked to stop (:meth:`Transport.cancel`).

        Args:
            job_ids: the job ids this worker runs.

        Returns:
            The subset for which a cancel was requested (empty on trouble or by default).
        """
        return set()

    def maintain(self) -> None:
        """Periodic housekeeping (stale temp files, trimming); called from the worker's main
        loop every few minutes, never concurrently with itself.  Default: nothing to do.

        Raises:
            TransportUnavailable: the queue cannot be reached now.
        """
        return None

    def health(self) -> dict:
        """Check the queue and store.

        Returns:
            {check name: (ok, detail)}; detail must not reveal absolute paths or secrets.
        """
        return {}


class ResultStore(abc.ABC):
    """Results, progress events and idempotency records."""

    @abc.abstractmethod
    def encode_result(self, result: Mapping[str, Any]) -> bytes:
        """The stored form of a result.

        Args:
            result: a result document built by the worker.

        Returns:
            Its bytes as this store keeps them.

        Raises:
            TypeError, ValueError: it cannot be stored (not JSON-serialisable).
        """

    @abc.abstractmethod
    def get_result(self, job_id: str) -> dict | None:
        """The stored result of a job.

        Args:
            job_id: the job's id.

        Returns:
            Its last attempt's result document, or None when none is stored.

        Raises:
            TransportUnavailable: the store cannot be read now.
            ValueError: what is stored is not a result document.
        """

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        """Like :meth:`get_result`, but wait for a final result.

        Implementations should be woken by the commit rather than poll; this default polls.

        Args:
            job_id: the job's id.
            timeout: seconds to wait.

        Returns:
            The final result, or whatever is stored (maybe None) when the time is up.
        """
        end = time.monotonic() + timeout
        while True:
            result = self.get_result(job_id)
            if result is not None and result.get("status") in FINAL_STATUSES:
                return result
            left = end - time.monotonic()
            if left <= 0:
                return result
            time.sleep(min(0.05, left))

    def stage_result(self, outcome: Outcome) -> None:
        """Optionally store outcome's result ahead of :meth:`Transport.commit`, from the job's
        own thread, so that many job threads' writes overlap and commit() only has to make them
        durable together (sets ``outcome.staged``).  Default: nothing (commit stores it).

        Args:
            outcome: the outcome the worker will commit.

        Raises:
            OSError, TransportUnavailable, TypeError, ValueError: as commit would.
        """
        return None

    @abc.abstractmethod
    def append_progress(self, job_id: str, event: Mapping[str, Any]) -> None:
        """Append one progress event of a running job (best effort: may drop on storage error).

        Args:
            job_id: the running job's id.
            event: the event as the handler's context built it.
        """

    @abc.abstractmethod
    def read_progress(self, job_id: str, after: int = 0) -> list:
        """The job's progress events.

        Args:
            job_id: the job's id.
            after: how many of the first events to skip.

        Returns:
            The events after the first ``after`` ones, oldest first.

        Raises:
            TransportUnavailable: the store cannot be read now.
        """

    @abc.abstractmethod
    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        """Atomically reserve a key for a job before its handler runs; exactly one of two
        racing reservations wins, and a reservation held by a worker that died is taken over.

        Args:
            key: the job's ``execution.idempotency_key``.
            job_id: the job about to run.

        Returns:
            Whether it won, else who holds the key and in which state.

        Raises:
            OSError, TransportUnavailable: the store cannot be written now.
        """

    @abc.abstractmethod
    def release_idempotency_key(self, key: str, job_id: str) -> None:
        """Drop a job's reservation of a key (it did not complete: the key may run again).

        Args:
            key: the reserved key.
            job_id: the job that holds it (another holder's reservation is left alone).

        Raises:
            OSError, TransportUnavailable: the store cannot be written now.
        """


class Transport(JobQueue, ResultStore):
    """A queue and a store in one object: what the worker, the API and the CLI commands use."""

    @abc.abstractmethod
    def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Store each outcome and acknowledge its delivery, in an order a crash cannot break.

        Each outcome's result is made durable, its idempotency key marked, then its delivery
        acknowledged (archived) or, with ``release``, given back: a job is never acknowledged
        before its result is durable.  Several outcomes may share one flush to disk or round
        trip.  The documents are stored as the worker built them.  Never raises for one
        outcome: an outcome that could not be stored gets ``error`` set and its delivery stays
        held (the worker commits it again later); the others go on.

        Args:
            outcomes: outcomes of deliveries this worker holds.

        Note:
            ``error`` is a LeaseLost (also reported to the observer) when this worker no
            longer owns the delivery, OSError or TransportUnavailable on storage trouble,
            TypeError or ValueError for a result that cannot be stored.
        """

    @abc.abstractmethod
    def job_status(self, job_id: str) -> JobStatus | None:
        """Where a job is now.

        Args:
            job_id: the job's id.

        Returns:
            Its status, or None when no such job is known.

        Raises:
            TransportUnavailable: the queue or store cannot be read now.
        """

    @abc.abstractmethod
    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        """One page of known jobs, newest first.

        Args:
            status: only jobs in this status (one of JOB_STATUSES).
            operation: only jobs of this operation.
            limit: the most jobs on the page.
            page_token: ``next_page_token`` of the previous page, or None for the first.

        Returns:
            The page and the token of the next one (None on the last).

        Raises:
            InvalidPageToken: a page_token this transport did not make.
            TransportUnavailable: the queue or store cannot be read now.
        """

    @abc.abstractmethod
    def cancel(self, job_id: str, cancelled: CancelledDocuments) -> str:
        """Cancel a job, atomically with respect to the workers.

        A waiting job is taken out of the queue and gets the result (and reason) that
        ``cancelled`` builds from what the transport knows of it (:class:`QueuedJob`); the
        transport stores them as they are.  A running one is flagged for its worker
        (:meth:`JobQueue.cancel_requests`) when its document allows it.

        Args:
            job_id: the job's id.
            cancelled: builds the documents of a waiting job cancelled on request (called only
                for such a job, maybe before the transport knows it still waits:
                ``guestkit_worker.job.outcomes.cancelled_before_start``).

        Returns:
            ``cancelled`` (it was waiting: it will never run and has its cancelled result now),
            ``cancelling`` (it is running and cancellable: its worker is asked to stop it),
            ``finished`` (it already ended), ``not_cancellable`` (running, and its document
            does not allow it) or ``not_found``.

        Raises:
            TransportUnavailable: the queue or store cannot be reached or written now (or the
                file transport is not open: a waiting job is claimed to be cancelled).
        """

    # -- dead letters: primitive storage operations (what may be requeued is the caller's call)
    def dead_list(self, limit: int = 100, page_token: str | None = None) -> DeadPage:
        """One page of dead letters, newest first (without their documents).

        Args:
            limit: the most entries on the page.
            page_token: ``next_page_token`` of the previous page, or None for the first.

        Returns:
            The page and the token of the next one (None on the last).  This default: none.

        Raises:
            InvalidPageToken: a page_token this transport did not make.
            TransportUnavailable: the dead letters cannot be read now.
        """
        if page_token:
            raise InvalidPageToken()
        return DeadPage()

    def dead_get(self, entry: str) -> DeadLetter | None:
        """One dead letter with its document's bytes (``raw``).

        Args:
            entry: its name as :meth:`dead_list` gave it; anything else (a path, a huge or
                non-ASCII text) finds nothing.

        Returns:
            The dead letter, or None when there is no such entry.

        Raises:
            TransportUnavailable: the dead letters cannot be read now.
        """
        return None

    def dead_requeue(self, entry: str) -> DeadRequeue:
        """Queue a dead letter's original document again as a new delivery and drop the dead
        letter, durably, in an order a crash cannot turn into a lost job.  A job id whose job
        this dead letter ended (or that never ran) follows the new delivery.

        Args:
            entry: the dead letter's name; the caller has judged its document runnable.

        Returns:
            ``queued``, ``not_found``, or ``refused`` with the reason the transport found.

        Raises:
            TransportUnavailable: the queue cannot be written now (nothing was changed).
        """
        return DeadRequeue("not_found")

    def dead_purge(self, entry: str) -> bool:
        """Delete a dead letter for good.

        Args:
            entry: the dead letter's name.

        Returns:
            True when it was deleted now, False when there is no such entry.

        Raises:
            TransportUnavailable: the dead letters cannot be written now.
        """
        return False
