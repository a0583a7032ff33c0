"""What crosses the transport interface besides job documents (re-exported by :mod:`.base`):
the delivery token, the outcome handed to ``commit``, the answers of submit, status, listing
and idempotency reservations, and the bytes a job document is queued as."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import JobTooLarge

_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def compact_job_bytes(doc: Mapping[str, Any]) -> bytes:
    """A job document as one line of JSON, the smallest form json writes: a retry's rewrite
    stays about the size of the document read (indented, it can grow eightfold).
    backslashreplace: a lone surrogate (decoded from a \\udXXX escape) becomes that escape again."""
    return _COMPACT.encode(doc).encode("utf-8", "backslashreplace")


def job_bytes(doc: Mapping[str, Any], raw: bytes | None, limit: int) -> bytes:
    """The bytes a submitted job is queued as.

    Args:
        doc: the validated job document.
        raw: the very bytes that were validated, if any: queued as they are.
        limit: the size workers read (--max-job-size).

    Returns:
        ``raw`` when given, else :func:`compact_job_bytes` of ``doc``.

    Raises:
        JobTooLarge: the bytes are over ``limit`` (once queued, the job would be refused
            unread, without a result).
    """
    data = raw if raw is not None else compact_job_bytes(doc)
    if len(data) > limit:
        raise JobTooLarge(len(data), limit)
    return data


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
    """How one delivery ends, handed to :meth:`Transport.commit`.  The worker builds every
    document in it; the transport stores them as they are.

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
    #: the worker holding this unfinished job is known dead (its lock is free, its liveness key
    #: expired): the job waits to be taken over, it does not run
    worker_gone: bool = False

    def to_dict(self) -> dict:
        out = {"job_id": self.job_id, "status": self.status, "operation": self.operation,
               "attempt": self.attempt, "worker_id": self.worker_id, "submitted_at": self.submitted_at,
               "started_at": self.started_at, "completed_at": self.completed_at, "error": self.error}
        if self.worker_gone:  # only then: the answer of a job whose worker lives is unchanged
            out["worker_gone"] = True
        return out


@dataclass
class WorkerInfo:
    """One worker of a pool as the ``workers`` command shows it.  ``alive``: its lock is held
    (files) or its liveness key is there (Redis); ``running``: ids of the jobs it holds
    started; ``held``: how many deliveries it holds in all (started or not); ``last_seen``: its
    last sign of life (RFC 3339), as far as the transport records one."""

    worker_id: str
    pool: str | None
    alive: bool
    running: list = field(default_factory=list)
    held: int = 0
    last_seen: str | None = None

    def to_dict(self) -> dict:
        return {"worker_id": self.worker_id, "pool": self.pool, "alive": self.alive,
                "running": list(self.running), "held": self.held, "last_seen": self.last_seen}


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


@dataclass
class DeadLetter:
    """One dead letter: a queue entry moved aside for good.  ``entry`` names it in the
    transport's dead letters (a stream entry id, a file name in failed/); ``reason`` is a short
    code (``not_json``, ``too_large``, ``no_job_id``, ``duplicate_job_id``, ...), ``detail`` one
    line; ``job_id`` when known; ``dead_at`` an RFC 3339 UTC time stamp; ``raw`` the document's
    bytes as they were queued (None when the entry kept none; only :meth:`dead_get` fills it)."""

    entry: str
    reason: str
    detail: str
    job_id: str | None
    dead_at: str
    raw: bytes | None = None

    def to_dict(self) -> dict:
        return {"entry": self.entry, "reason": self.reason, "detail": self.detail, "job_id": self.job_id,
                "dead_at": self.dead_at}


@dataclass
class DeadPage:
    """One page of :meth:`Transport.dead_list`, newest first."""

    entries: list = field(default_factory=list)
    next_page_token: str | None = None


@dataclass
class DeadRequeue:
    """What :meth:`Transport.dead_requeue` did: ``queued`` (a new delivery waits at
    ``location``; the dead letter is gone), ``not_found``, or ``refused`` with ``reason`` and
    ``detail`` (the transport found, in the same step, that it cannot run: e.g. another entry
    is the job of its id)."""

    outcome: str
    location: str | None = None
    job_id: str | None = None
    reason: str | None = None
    detail: str | None = None
