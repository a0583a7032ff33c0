"""The Redis Streams transport: a fleet of workers on many hosts shares one pool's stream.

:class:`RedisTransport` composes separate parts that use one another only through their
public methods: the link to Redis (:mod:`.link`: clients, scripts, outages, the worker id),
the entries this worker holds (:mod:`.held`), the queue (:mod:`.queue`), the reclaimer
(:mod:`.reclaim`), the store (:mod:`.store`) and the index (:mod:`.index`).  Leases: an entry
delivered to this worker is its while the entry's idle time in the consumer group's pending
list stays below ``lease_seconds``; the worker renews it (``extend_lease``) every lease/4
while the job runs, and other workers take over entries idle longer than that (``reclaim``),
except for a lease after Redis came back from an outage (every lease looks expired then; live
owners renew meanwhile).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...job.errors import ConfigError
from ...settings.defaults import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_JOB_BYTES,
    DEFAULT_RESULT_TTL,
)
from ..base import (
    CancelledDocuments,
    DeadLetter,
    DeadPage,
    DeadRequeue,
    Delivery,
    JobStatus,
    Outcome,
    Page,
    ReclaimDecision,
    Reservation,
    SubmitReceipt,
    Transport,
    TransportObserver,
    TransportUnavailable,
    UnrecoverableReason,
)
from . import connection, tls
from .dead import RedisDeadLetters
from .held import HeldEntries
from .index import RedisIndex
from .keys import GROUP
from .link import RedisLink, RedisOutcomeUnknown, RedisUnavailable
from .queue import RedisQueue
from .reclaim import RedisReclaimer
from .store import RedisStore

__all__ = ["RedisOutcomeUnknown", "RedisTransport", "RedisUnavailable"]

log = logging.getLogger(__name__)



class RedisTransport(Transport):
    """Jobs, results and job state of worker pool ``pool`` on the Redis at ``url``.

    Parts: ``link`` (:class:`~.link.RedisLink`), ``held`` (:class:`~.held.HeldEntries`),
    ``queue`` (:class:`~.queue.RedisQueue`), ``reclaimer`` (:class:`~.reclaim.RedisReclaimer`),
    ``store`` (:class:`~.store.RedisStore`), ``index`` (:class:`~.index.RedisIndex`) and
    ``dead`` (:class:`~.dead.RedisDeadLetters`).  metrics: the
    :class:`~..base.TransportObserver` told of failed calls, takeovers, lost leases, dead
    letters and the oldest waiting job's age."""

    protected_paths = ()
    starts_on_fetch = RedisQueue.starts_on_fetch

    def __init__(self, url: str, worker_id: str, *, pool: str = "default", password_file: str | None = None,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 max_deliveries: int = DEFAULT_MAX_DELIVERIES, result_ttl: int = DEFAULT_RESULT_TTL,
                 max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
                 metrics: TransportObserver | None = None) -> None:
        connection.check_url(url)
        tls_files = tls.TlsFiles(tls_ca_file, tls_cert_file, tls_key_file)
        tls.check(url, tls_files, connection.describe(url))
        if lease_seconds < 1:
            raise ConfigError(f"--lease-seconds must be at least 1, got {lease_seconds}")
        if max_deliveries < 1:
            raise ConfigError(f"--max-deliveries must be at least 1, got {max_deliveries}")
        if result_ttl < 1:
            raise ConfigError(f"--result-ttl must be at least 1 second, got {result_ttl}")
        self.worker_id, self.pool = worker_id, pool
        self.max_deliveries, self.max_job_bytes = int(max_deliveries), int(max_job_bytes)
        #: what only the transport sees is reported here (the worker passes its metrics)
        self.metrics = metrics if metrics is not None else TransportObserver()
        self.link = RedisLink(url, worker_id, pool=pool, password_file=password_file, tls_files=tls_files,
                              lease_seconds=float(lease_seconds), result_ttl=int(result_ttl),
                              observer=self.metrics, stopping=lambda: self.stopping())
        self.k = self.link.k
        self.held = HeldEntries(self.metrics)
        self.queue = RedisQueue(self.link, self.held, max_job_bytes=self.max_job_bytes)
        self.reclaimer = RedisReclaimer(self.link, self.held, self.queue, max_deliveries=self.max_deliveries)
        self.store = RedisStore(self.link, self.held)
        self.index = RedisIndex(self.link)
        self.dead = RedisDeadLetters(self.link, max_job_bytes=self.max_job_bytes)

    @property
    def lease_seconds(self) -> float:
        return self.link.lease_seconds

    @property
    def identity_lost(self) -> str | None:
        return self.link.identity_lost

    @property
    def where(self) -> str:
        return self.link.where

    # -- life ---------------------------------------------------------------------------
    def open(self) -> None:
        self.link.open()
        log.info("redis transport: %s, lease %ss, at most %d deliveries, results kept %ss", self.describe(),
                 self.lease_seconds, self.max_deliveries, self.link.result_ttl)

    def close(self) -> None:
        """Leave the group when this consumer holds nothing; held entries stay for reclaim."""
        self.link.close(holding=bool(self.held.entries()))

    def describe(self) -> str:
        return f"redis stream {self.k.jobs} at {self.where}, consumer {self.worker_id} of group {GROUP}"

    def health(self) -> dict:
        try:
            with self.link.guard("health"):
                self.link.r.ping()
        except TransportUnavailable as exc:
            return {"transport": (False, f"redis at {self.where} unreachable: {exc}")}
        return {"transport": (True, f"redis at {self.where} reachable")}

    def maintain(self) -> None:
        self.index.maintain()

    # -- the queue ----------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        return self.queue.submit(doc, raw)

    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        return self.queue.fetch(max_count, timeout)

    def read(self, delivery: Delivery) -> bytes:
        return self.queue.read(delivery)

    def mark_started(self, delivery: Delivery) -> None:
        self.queue.mark_started(delivery)

    def extend_lease(self, delivery: Delivery) -> bool:
        return self.queue.extend_lease(delivery)

    def renew_held(self) -> None:
        """See :meth:`.queue.RedisQueue.renew_held` (called by the worker's lease keeper)."""
        self.queue.renew_held()

    def retry(self, delivery: Delivery, doc: Mapping[str, Any]) -> None:
        self.queue.retry(delivery, doc)

    def release(self, delivery: Delivery, *, not_for_me: bool = False, other_pool: bool = False) -> None:
        self.queue.release(delivery, not_for_me=not_for_me, other_pool=other_pool)

    def reclaim(self, decide: ReclaimDecision, limit: int, *,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        return self.reclaimer.reclaim(decide, limit, unrecoverable)

    def depth(self) -> int:
        return self.queue.depth()

    def cancel_requests(self, job_ids: Iterable[str]) -> set:
        return self.queue.cancel_requests(job_ids)

    # -- the store and the index --------------------------------------------------------
    def encode_result(self, result: Mapping[str, Any]) -> bytes:
        return self.store.encode_result(result)

    def get_result(self, job_id: str) -> dict | None:
        return self.store.get_result(job_id)

    def append_progress(self, job_id: str, event: Mapping[str, Any]) -> None:
        self.store.append_progress(job_id, event)

    def read_progress(self, job_id: str, after: int = 0) -> list:
        return self.store.read_progress(job_id, after)

    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        return self.store.reserve_idempotency_key(key, job_id)

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        self.store.release_idempotency_key(key, job_id)

    def commit(self, outcomes: Sequence[Outcome]) -> None:
        self.store.commit(outcomes)

    def job_status(self, job_id: str) -> JobStatus | None:
        return self.index.job_status(job_id)

    def workers(self) -> list:
        """The pool's workers, live and gone (:mod:`.workers`)."""
        from .workers import redis_workers
        return redis_workers(self.link)

    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        return self.index.list_jobs(status=status, operation=operation, limit=limit, page_token=page_token)

    def cancel(self, job_id: str, cancelled: CancelledDocuments) -> str:
        return self.index.cancel(job_id, cancelled)

    # -- dead letters -------------------------------------------------------------------
    def dead_list(self, limit: int = 100, page_token: str | None = None) -> DeadPage:
        return self.dead.dead_list(limit, page_token)

    def dead_get(self, entry: str) -> DeadLetter | None:
        return self.dead.dead_get(entry)

    def dead_requeue(self, entry: str) -> DeadRequeue:
        return self.dead.dead_requeue(entry)

    def dead_purge(self, entry: str) -> bool:
        return self.dead.dead_purge(entry)
