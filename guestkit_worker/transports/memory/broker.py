"""The state every in-memory transport of one queue shares: a :class:`MemoryBroker`.

One broker is one queue and one store.  Each :class:`~.transport.MemoryTransport` made with it
is one worker of that queue, as each worker process is for a jobs directory or a Redis pool.
All of the state sits behind one condition variable (``cond``): every change is one step
under it, which is what a Lua script is to Redis and a rename is to the file transport, and
waiters (``fetch``, ``wait_result``) are woken by it.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ...job.timestamps import stamp
from ..base import TransportUnavailable

#: dead letters kept (the oldest are forgotten first)
MAX_DEAD_LETTERS = 10000


class MemoryUnavailable(TransportUnavailable, OSError):
    """The broker acts unreachable (:meth:`MemoryBroker.set_unavailable`).  An OSError too, like
    the Redis transport's outage error, so that every path of the worker that handles storage
    trouble (give the job back, back off, commit again later) handles it the same way."""


@dataclass(eq=False)
class Entry:
    """One job document in the queue.  ``job_id`` is known from submit, else read from the
    document at its first delivery (``peeked``)."""

    id: int
    raw: bytes
    job_id: str | None = None
    peeked: bool = False
    deliveries: int = 0
    skip: dict[str, float] = field(default_factory=dict)  # worker id -> broker time it may have it again

    @property
    def name(self) -> str:
        return f"entry-{self.id}"


@dataclass(eq=False)
class Claim:
    """An entry delivered to a worker.  ``generation`` names this very hand-out: a delivery
    whose generation is no longer the claim's belongs to a worker that lost it."""

    entry: Entry
    owner: str
    token: object          # the transport that holds it (see MemoryBroker.alive)
    generation: int
    expires: float         # broker time
    started: bool = False


@dataclass(eq=False)
class Job:
    """What is known of one job id (its state, as a Redis job hash holds it)."""

    job_id: str
    seq: int               # creation order: list_jobs shows the highest first
    entry: int             # the one entry that is this job; any other entry with its id is a duplicate
    digest: str
    operation: str | None
    cancellable: bool
    attempt: int
    submitted_at: str
    status: str = "pending"
    worker_id: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    error: dict | None = None
    unrun: bool = False    # dead-lettered before its handler started: its id is free again
    cancel: bool = False
    ended: float | None = None  # broker time it reached a final status (maintain forgets it later)


@dataclass(eq=False)
class KeyHold:
    """An idempotency key: held by a running job (and the transport that reserved it) or
    completed by one."""

    job_id: str
    state: str
    worker_id: str
    token: object | None = None
    ended: float | None = None


class MemoryBroker:
    """One queue and store shared by the :class:`~.transport.MemoryTransport` objects made with it.

    clock: returns monotonic seconds; it decides when leases run out and when maintain() forgets
    old results (default time.monotonic).  Waits (``fetch``, ``wait_result``) are real seconds.

    The public methods besides the transports' are for tests and embedders: :meth:`add_raw`,
    :meth:`declare_dead`, :meth:`set_unavailable` and :meth:`dead_letters`.  The other
    attributes are the transports' state, read and changed only with ``cond`` held."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, name: str = "memory") -> None:
        self.clock = clock
        self.name = name
        self.cond = threading.Condition(threading.RLock())
        self.waiting: collections.OrderedDict[int, Entry] = collections.OrderedDict()
        self.claims: dict[int, Claim] = {}
        self.jobs: dict[str, Job] = {}
        self.results: dict[str, bytes] = {}
        self.progress: dict[str, list] = {}
        self.keys: dict[str, KeyHold] = {}
        self.alive: dict[str, object] = {}  # worker id -> token of the open transport of that id
        self._dead: collections.deque[dict] = collections.deque(maxlen=MAX_DEAD_LETTERS)
        self._numbers = itertools.count(1)
        self._outage: str | None = None

    # -- for tests and embedders --------------------------------------------------------
    def add_raw(self, data: bytes) -> str:
        """Queue bytes as a job the way a producer that bypasses submit would (no job state, no
        duplicate check: both happen at its first delivery); returns the entry's name."""
        with self.cond:
            return self.add_entry(bytes(data)).name

    def declare_dead(self, worker_id: str) -> None:
        """Take worker_id for dead, as when its process crashed: nothing it held is released;
        other workers reclaim its deliveries and take its idempotency reservations over at
        once.  The transport object itself is not stopped (a dead process makes no calls)."""
        with self.cond:
            self.alive.pop(worker_id, None)

    def set_unavailable(self, reason: str | None) -> None:
        """While reason is set, every operation that reads or changes the queue or the store
        raises :class:`MemoryUnavailable` (commit marks its outcomes with it instead, health
        fails), as a Redis outage or a full disk would; None ends it, nothing lost."""
        with self.cond:
            self._outage = reason
            self.cond.notify_all()

    def dead_letters(self) -> list:
        """Copies of the entries taken out of the queue as unusable, oldest first: {"entry",
        "reason", "detail", "worker", "raw", "id", "job_id", "at"}."""
        with self.cond:
            return [dict(d) for d in self._dead]

    # -- for the transports (cond held) -------------------------------------------------
    def check(self) -> None:
        if self._outage is not None:
            raise MemoryUnavailable(f"memory broker {self.name} unavailable: {self._outage}")

    @property
    def outage(self) -> str | None:
        return self._outage

    def number(self) -> int:
        """A new number: entry ids, job creation order and hand-out generations draw from it."""
        return next(self._numbers)

    def add_entry(self, raw: bytes, job_id: str | None = None) -> Entry:
        entry = Entry(self.number(), raw, job_id, peeked=job_id is not None)
        self.waiting[entry.id] = entry
        self.cond.notify_all()
        return entry

    def owner_alive(self, worker_id: str, token: object) -> bool:
        return token is not None and self.alive.get(worker_id) is token

    def dead_letter(self, entry: Entry, reason: str, detail: str, worker_id: str) -> None:
        self.waiting.pop(entry.id, None)
        self.claims.pop(entry.id, None)
        self._dead.append({"entry": entry.name, "reason": reason, "detail": detail, "worker": worker_id,
                           "raw": entry.raw, "id": entry.id, "job_id": entry.job_id, "at": stamp()})

    def dead_index(self, name: str) -> int | None:
        """Where dead letter ``name`` is in the dead letters, or None (cond held)."""
        for i, d in enumerate(self._dead):
            if d["entry"] == name:
                return i
        return None

    def dead_rows(self) -> list:
        """The dead letters themselves, oldest first (cond held; for the transports)."""
        return list(self._dead)

    def drop_dead(self, i: int) -> None:
        del self._dead[i]
