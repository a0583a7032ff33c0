"""The two seams between the worker and the outside world: where jobs come from (a
:class:`JobQueue`) and where results go (a :class:`ResultStore`).  A transport implements
both in one object (:class:`Transport`), because a crash-safe outcome needs the result stored
and the delivery acknowledged in one step (one Lua script for Redis; result file, directory
flush, then the job file's archive for files).

Roles:

* the **worker** owns policy: admission, the retry decision, attempts, timeouts,
  ``WORKER_CRASHED``, and every result and reason document (``guestkit_worker.job.outcomes``);
* the **queue** owns delivery, leases, orphan detection and atomic requeue;
* the **store** owns durability, progress events and the atomicity of idempotency
  reservations.

A :class:`Delivery` is an opaque token: the worker reads its attributes for logs and
decisions, and hands it back to the transport that made it; it never looks inside.

Errors: storage trouble (disk full, permission, a queue server gone) raises
:class:`TransportUnavailable` (or ``OSError`` for local files); a job document that cannot be
read as JSON raises :class:`guestkit_worker.job.errors.JobFileError` from :meth:`JobQueue.read`.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from ..job.errors import GuestkitWorkerError

#: Every status a job can be seen in (the API's and ``status``'s vocabulary).
JOB_STATUSES = ("pending", "running", "completed", "failed", "timeout", "cancelled", "rejected")
#: Statuses after which nothing more happens to a job.
FINAL_STATUSES = frozenset({"completed", "failed", "timeout", "cancelled", "rejected"})


class TransportUnavailable(GuestkitWorkerError):
    """The queue or store cannot be reached or written right now (retry later; nothing is lost)."""


class InvalidPageToken(ValueError):
    """A ``list_jobs`` page_token that this transport did not make.  The token arrives from a
    client as is, so its message is fixed: one line that never repeats the token."""

    def __init__(self) -> None:
        super().__init__("not a token from a previous page of this listing; leave it out to start "
                         "from the first page")


class OutcomeUnknown(TransportUnavailable):
    """A change was sent to the queue or store, but its answer never came back (a timeout, a
    connection lost after sending): it may or may not have been made.  Submitting the same
    document again is safe: one job id and document never make a second job."""


class JobTooLarge(GuestkitWorkerError):
    """A job document whose stored form would be over the workers' --max-job-size: it is not
    queued (a worker would refuse it unread, and the job would end without a result)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"the job document is {size} bytes as stored, larger than the limit of {limit} "
                         "bytes (--max-job-size); it was not queued: make it smaller or raise the limit")


_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def compact_job_bytes(doc: Mapping[str, Any]) -> bytes:
    """A job document as one line of JSON, the smallest form json writes: a retry's rewrite
    stays about the size of the document read (indented, it can grow eightfold).
    backslashreplace: a lone surrogate (decoded from a \\udXXX escape) becomes that escape again."""
    return _COMPACT.encode(doc).encode("utf-8", "backslashreplace")


def job_bytes(doc: Mapping[str, Any], raw: bytes | None, limit: int) -> bytes:
    """The bytes a submitted job is queued as: ``raw`` (the very bytes that were validated)
    when given, else :func:`compact_job_bytes`.  JobTooLarge when they are over ``limit``,
    the size workers read: once queued, the job would be refused unread, without a result."""
    data = raw if raw is not None else compact_job_bytes(doc)
    if len(data) > limit:
        raise JobTooLarge(len(data), limit)
    return data


class StopRequested(GuestkitWorkerError):
    """The worker was asked to stop while the transport waited for its server at start (or
    for a worker id to be free): nothing was taken, the worker ends as a clean stop."""


class LeaseLost(GuestkitWorkerError):
    """This worker no longer owns a delivery (another worker reclaimed it): its outcome must not
    be stored and its handler should stop."""


class Delivery:
    """One delivery of one job to this worker.  Transports subclass it and add their own slots.

    Attributes the worker may read:

    * ``name``: short text naming the delivery in logs (a file name, a stream entry id);
    * ``job_id``: the job's id once known (set by the worker after :meth:`JobQueue.read`);
    * ``attempt``: the job's ``execution.attempt`` once known;
    * ``started``: True once the job counts as started: :meth:`JobQueue.mark_started` ran, or
      the transport records the start in the step that delivers (see
      :attr:`JobQueue.starts_on_fetch`), or a reclaimed delivery whose handler had started
      in a worker that died;
    * ``delivered_at``: wall-clock time of this delivery (for the queue-wait metric);
    * ``delivery_count``: how many times the queue has handed this entry out (1 the first time);
    * ``no_result_yet``: True when the transport, in the same atomic step that delivered it
      to this worker, saw no result stored under ``job_id`` (and no other delivery can store
      one while this worker owns it): the worker's look for a result stored before is spared.
    """

    __slots__ = ("name", "job_id", "attempt", "started", "delivered_at", "delivery_count", "no_result_yet")

    def __init__(self, name: str, *, started: bool = False, delivery_count: int = 1) -> None:
        self.name = name
        self.job_id: str | None = None
        self.attempt: int | None = None
        self.started = started
        self.delivered_at = time.time()
        self.delivery_count = delivery_count
        self.no_result_yet = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass
class Outcome:
    """How one delivery ends, handed to :meth:`Transport.commit`.

    ``status`` is the result's status (``completed failed timeout cancelled``) or
    ``rejected`` / ``duplicate``; ``result`` the result document to store (None when no
    result is stored, e.g. a duplicate of the job itself, or a rejected file without a job
    id); ``encoded`` its bytes from :meth:`ResultStore.encode_result` when already
    serialised; ``reason`` the reason document kept beside a failed job; ``failed`` whether
    the job is archived as failed; ``idempotency_key`` a key to mark completed with this
    result (``status == "completed"`` only) or to release otherwise.
    """

    delivery: Delivery
    status: str
    result: dict | None = None
    encoded: bytes | None = None
    reason: dict | None = None
    failed: bool = False
    idempotency_key: str | None = None
    #: store the result, then give the delivery back unchanged instead of acknowledging it (a
    #: job cancelled by a worker's shutdown runs again)
    release: bool = False
    #: set by ResultStore.stage_result once the result is written ahead of commit()
    staged: bool = False
    error: BaseException | None = None  #: set by commit() when this outcome was not stored


@dataclass
class SubmitReceipt:
    """What :meth:`JobQueue.submit` did: ``created`` (a new job), ``exists`` (the same document
    was submitted before: nothing new was created) or ``conflict`` (another document already
    has this job id).  ``status`` is the job's current status (one of JOB_STATUSES)."""

    job_id: str
    outcome: str
    status: str = "pending"
    location: str | None = None  #: where it waits, for messages (a file path, a stream id)


@dataclass
class JobStatus:
    """One job as the API and the ``status``/``list`` commands show it."""

    job_id: str
    status: str
    operation: str | None = None
    attempt: int | None = None
    worker_id: str | None = None
    submitted_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    error: dict | None = None
    cancellable: bool = False

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "status": self.status, "operation": self.operation,
                "attempt": self.attempt, "worker_id": self.worker_id, "submitted_at": self.submitted_at,
                "started_at": self.started_at, "completed_at": self.completed_at, "error": self.error}


@dataclass
class Reservation:
    """The answer of :meth:`ResultStore.reserve_idempotency_key`.

    ``won`` True: this job holds the key now and may run.  Otherwise ``holder_job_id`` holds
    it, ``state`` is ``running`` (another delivery is running it) or ``completed`` (then
    ``result`` is that job's stored result document)."""

    won: bool
    holder_job_id: str | None = None
    state: str | None = None
    result: dict | None = None


@dataclass
class Page:
    """One page of :meth:`Transport.list_jobs`."""

    jobs: list = field(default_factory=list)
    next_page_token: str | None = None


#: decide(delivery, dead_worker_id): called by JobQueue.reclaim for each delivery it took back
ReclaimDecision = Callable[[Delivery, str], None]


class TransportObserver:
    """Where a transport reports what only it sees; every method does nothing here.  The
    worker passes its metrics (the same methods, counted), so a transport needs nothing of the
    layers above it."""

    def jobs_reclaimed(self, n: int = 1) -> None:
        """``n`` deliveries of dead workers were taken back."""

    def lease_lost(self) -> None:
        """A lease this worker held was taken by another worker."""

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

    @abc.abstractmethod
    def open(self) -> None:
        """Connect or create what is needed and announce this worker as alive.  Raises
        ConfigError for a misconfiguration an operator must fix (exit 2)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what open() took; deliveries still held stay for reclaim by other workers (a
        lease later where liveness is lease-based).  Idempotent.  Afterwards :meth:`fetch`
        delivers nothing (an empty list) and :meth:`reclaim` takes nothing (0), so a thread
        still looking for work at shutdown is harmless."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for logs saying where jobs come from (no secrets)."""

    @abc.abstractmethod
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        """Queue a validated job document; never creates two jobs for one job id (see
        SubmitReceipt).  ``raw``: the document's bytes as received, if any: what is queued
        (see :func:`job_bytes`; JobTooLarge when over the transport's max_job_bytes)."""

    @abc.abstractmethod
    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        """Take up to max_count waiting jobs for this worker (no prefetch beyond that), waiting
        up to timeout seconds for the first one.  An empty list when none came."""

    @abc.abstractmethod
    def read(self, delivery: Delivery) -> bytes:
        """The delivered job document's bytes; JobFileError when they cannot be a job (not a
        regular file, over --max-job-size, ...)."""

    @abc.abstractmethod
    def mark_started(self, delivery: Delivery) -> None:
        """Record durably that the job's handler is about to run (reclaim then counts it as an
        attempt).  Sets ``delivery.started``.  Makes no round trip for a delivery whose start
        :meth:`fetch` recorded already (:attr:`starts_on_fetch`)."""

    def extend_lease(self, delivery: Delivery) -> bool:
        """Renew this worker's claim on a running delivery; False when the lease was lost
        (another worker owns it now).  A no-op (True) where liveness is not lease-based."""
        return True

    @abc.abstractmethod
    def retry(self, delivery: Delivery, doc: Mapping[str, Any]) -> None:
        """Atomically replace the delivered job by ``doc`` (the same job, its attempt + 1) at
        the back of the queue."""

    def hold_job_id(self, delivery: Delivery) -> bool:
        """Atomically mark ``delivery.job_id`` as running in this delivery before its handler
        starts; False while another live delivery (another job file, another worker) holds it:
        the worker then gives this one back unstarted.  The hold ends when the delivery is
        acknowledged, retried or released, and a hold of a worker that died is taken over.
        Default True: for queues that never hand out two deliveries of one job id."""
        return True

    @abc.abstractmethod
    def release(self, delivery: Delivery, *, not_for_me: bool = False) -> None:
        """Give a delivery back unstarted and unchanged.  not_for_me: it is meant for another
        pool or worker, so do not hand it to this worker again soon."""

    @abc.abstractmethod
    def reclaim(self, decide: ReclaimDecision, limit: int) -> int:
        """Take over up to ``limit`` deliveries of workers that died (or lost their lease) and
        hand each to ``decide``, which must dispose of it (commit, retry or release).  Returns
        how many were handed over.  Exceptions raised by decide for one delivery must not stop
        the others; such a delivery is disposed of as poison by the transport."""

    @abc.abstractmethod
    def depth(self) -> int:
        """Jobs waiting to be delivered to this worker's pool."""

    def cancel_requests(self, job_ids: Iterable[str]) -> set:
        """The subset of these running job ids for which a cancel was requested."""
        return set()

    def maintain(self) -> None:
        """Periodic housekeeping (stale temp files, trimming); called from the worker's main
        loop every few minutes, never concurrently with itself."""

    def health(self) -> dict:
        """{check name: (ok, detail)}; detail must not reveal absolute paths or secrets."""
        return {}

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


class ResultStore(abc.ABC):
    """Results, progress events and idempotency records."""

    @abc.abstractmethod
    def encode_result(self, result: Mapping[str, Any]) -> bytes:
        """The stored form of a result; TypeError/ValueError when it cannot be stored."""

    @abc.abstractmethod
    def get_result(self, job_id: str) -> dict | None:
        """The stored result of job_id (the last attempt's), or None."""

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        """Like get_result, but wait up to timeout seconds for a final result.  Implementations
        should be woken by the commit rather than poll; this default polls."""
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
        durable together (sets ``outcome.staged``).  Raises like commit would; default: nothing
        (commit stores it)."""

    @abc.abstractmethod
    def append_progress(self, job_id: str, event: Mapping[str, Any]) -> None:
        """Append one progress event of a running job (best effort: may drop on storage error)."""

    @abc.abstractmethod
    def read_progress(self, job_id: str, after: int = 0) -> list:
        """The job's progress events after the first ``after`` ones, oldest first."""

    @abc.abstractmethod
    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        """Atomically reserve key for job_id before its handler runs; exactly one of two racing
        reservations wins.  A reservation held by a worker that died is taken over."""

    @abc.abstractmethod
    def release_idempotency_key(self, key: str, job_id: str) -> None:
        """Drop job_id's reservation of key (it did not complete: the key may run again)."""


class Transport(JobQueue, ResultStore):
    """A queue and a store in one object: what the worker, the API and the CLI commands use."""

    @abc.abstractmethod
    def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Durably store each outcome's result, mark its idempotency key, and acknowledge its
        delivery (archive the job), in an order a crash cannot break: a job is never
        acknowledged before its result is durable.  Several outcomes may share one flush to disk or
        round trip.  An outcome that could not be stored gets ``error`` set and its delivery
        stays held (the worker keeps it and commits it again later); the others go on.
        Raises LeaseLost through ``error`` when this worker no longer owns the delivery."""

    @abc.abstractmethod
    def job_status(self, job_id: str) -> JobStatus | None:
        """Where job_id is now, or None when no such job is known."""

    @abc.abstractmethod
    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        """One page of known jobs, newest first; page_token from the previous page
        (:class:`InvalidPageToken` for any other)."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> str:
        """Cancel a job: ``cancelled`` (it was waiting: it will never run and has a cancelled
        result now), ``cancelling`` (it is running and cancellable: its worker is asked to stop
        it), ``finished`` (it already ended), ``not_cancellable`` (running, and its document
        does not allow it) or ``not_found``."""
