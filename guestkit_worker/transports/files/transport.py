""":class:`FileTransport`: the file transport's parts (:mod:`.queue`, :mod:`.liveness`,
:mod:`.reclaim`, :mod:`.results`, :mod:`.idempotency`, :mod:`.index`, :mod:`.cancels`,
:mod:`.jobids`) composed into one :class:`~..base.Transport`, with the two steps that span them:
the group commit and the cancel of a waiting job."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ...job.facts import job_facts
from ...job.outcomes import QueuedJob
from ...system.tempfiles import sweep_temp_files
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
from .cancels import CancelMarkers
from .claimed import ClaimedNames
from .dead import FileDeadLetters
from .idempotency import FileIdempotency
from .index import FileIndex
from .jobids import RunningIds
from .layout import Layout, read_json, result_bytes
from .liveness import WorkerLock
from .queue import FileDelivery, FileQueue
from .reclaim import FileReclaimer
from .results import FileResultStore, probe_dir

#: looks for a job to cancel (it may move between a look and the step on it)
_CANCEL_LOOKS = 3


class FileTransport(Transport):
    """Jobs from jobs_dir, results into results_dir, as worker_id.

    Parts, each with its own public methods (none calls another's private ones): ``lock``
    (:class:`~.liveness.WorkerLock`), ``names`` (:class:`~.claimed.ClaimedNames`), ``job_ids``
    (:class:`~.jobids.RunningIds`), ``queue`` (:class:`~.queue.FileQueue`), ``reclaimer``
    (:class:`~.reclaim.FileReclaimer`), ``results`` (:class:`~.results.FileResultStore`),
    ``keys`` (:class:`~.idempotency.FileIdempotency`), ``index`` (:class:`~.index.FileIndex`),
    ``cancels`` (:class:`~.cancels.CancelMarkers`) and ``dead`` (:class:`~.dead.FileDeadLetters`).

    durable: fsync results, retries and idempotency records (off only for tests and benches);
    once: fetch only the jobs present at the first fetch or depth (after open's recovery) and
    their retries, then report none; poll_interval: how often fetch() lists the jobs directory
    while it waits; observer: told of job files taken over from dead workers and of job files
    found taken over by another worker."""

    lease_seconds: float | None = None  # liveness is the flock, not a lease
    fetch_from_job_threads = True       # a claim is one rename in a list kept in memory

    def __init__(self, jobs_dir: str, results_dir: str, worker_id: str, *, max_job_bytes: int,
                 durable: bool = True, once: bool = False, poll_interval: float = 1.0,
                 observer: TransportObserver | None = None, pool: str | None = None) -> None:
        self.layout = L = Layout(jobs_dir, results_dir, worker_id)
        self.worker_id = worker_id
        observer = observer if observer is not None else TransportObserver()
        self.lock = WorkerLock(L, pool)
        self.names = ClaimedNames()
        self.job_ids = RunningIds(L)
        self.queue = FileQueue(L, self.lock, self.names, self.job_ids, observer, max_job_bytes=max_job_bytes,
                               durable=durable, once=once, poll_interval=poll_interval)
        self.reclaimer = FileReclaimer(L, self.lock, self.names, self.queue, observer)
        self.results = FileResultStore(L, durable=durable)
        self.keys = FileIdempotency(L, self.results, self.lock.worker_alive, durable=durable)
        self.index = FileIndex(L, self.results, max_job_bytes=max_job_bytes, durable=durable)
        self.cancels = CancelMarkers(L)
        self.dead = FileDeadLetters(L, max_job_bytes=max_job_bytes, durable=durable)

    @property
    def protected_paths(self) -> tuple:
        return (self.layout.jobs_dir, self.layout.results_dir)

    @property
    def local_dirs(self) -> dict:
        return {"results": self.layout.results_dir, "jobs": self.layout.jobs_dir}

    def describe(self) -> str:
        return f"files: jobs {self.layout.jobs_dir}, results {self.layout.results_dir}"

    # -- life ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the directory layout and take this worker's liveness lock (a live worker has
        the same id: ConfigError); job files an earlier life of this id left are handed over
        by the first reclaim."""
        L = self.layout
        for d in (L.jobs_dir, L.results_dir) + L.inner_dirs():
            L.make_dir(d)
        self.reclaimer.adopt(self.lock.take())
        self.results.open()
        self.job_ids.open()

    def close(self) -> None:
        self.lock.drop()
        self.job_ids.close()
        self.results.close()

    def maintain(self) -> None:
        """Remove temp files interrupted writes left behind (see guestkit_worker.system.tempfiles)."""
        sweep_temp_files(self.layout.temp_dirs())

    def health(self) -> dict:
        return {"jobs_dir": probe_dir(self.layout.jobs_dir, readable=True),
                "results_dir": probe_dir(self.layout.results_dir, readable=False)}

    # -- the queue ----------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        return self.index.submit(doc, raw)

    def fetch(self, max_count: int, timeout: float) -> Sequence[Delivery]:
        return self.queue.fetch(max_count, timeout)

    def read(self, delivery: Delivery) -> bytes:
        return self.queue.read(delivery)

    def mark_started(self, delivery: Delivery) -> None:
        self.queue.mark_started(delivery)

    def extend_lease(self, delivery: Delivery) -> bool:
        return self.queue.extend_lease(delivery)

    def retry(self, delivery: Delivery, doc: Mapping[str, Any]) -> None:
        self.queue.retry(delivery, doc)

    def hold_job_id(self, delivery: Delivery) -> bool:
        return self.job_ids.hold(delivery)

    def release(self, delivery: Delivery, *, not_for_me: bool = False, other_pool: bool = False) -> None:
        """jobs/ is shared by every pool: a job for another pool waits there for it."""
        self.queue.release(delivery, not_for_me=not_for_me or other_pool)

    def reclaim(self, decide: ReclaimDecision, limit: int = 1 << 30, *,
                unrecoverable: UnrecoverableReason | None = None) -> int:
        self.lock.touch()  # the daemon reclaims every 30 s: its last sign of life for `workers`
        return self.reclaimer.reclaim(decide, limit, unrecoverable)

    def workers(self) -> list:
        """Every worker that has a lock file or a processing dir here (:mod:`.workers`)."""
        from .workers import file_workers
        return file_workers(self.layout)

    def depth(self) -> int:
        return self.queue.depth()

    def cancel_requests(self, job_ids: Iterable[str]) -> set:
        return self.cancels.requested(job_ids)

    # -- the store ----------------------------------------------------------------------
    def encode_result(self, result: Mapping[str, Any]) -> bytes:
        return self.results.encode_result(result)

    def get_result(self, job_id: str) -> dict | None:
        return self.results.get_result(job_id)

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        return self.results.wait_result(job_id, timeout)

    def append_progress(self, job_id: str, event: Mapping[str, Any]) -> None:
        self.results.append_progress(job_id, event)

    def read_progress(self, job_id: str, after: int = 0) -> list:
        return self.results.read_progress(job_id, after)

    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        return self.keys.reserve(key, job_id)

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        self.keys.release(key, job_id)

    def job_status(self, job_id: str) -> JobStatus | None:
        return self.index.job_status(job_id)

    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        return self.index.list_jobs(status=status, operation=operation, limit=limit, page_token=page_token)

    # -- the outcome --------------------------------------------------------------------
    def stage_result(self, outcome: Outcome) -> None:
        """Write the outcome's result file now (fsynced, the directory not), so that commit()
        only needs one directory fsync for many outcomes."""
        if outcome.result is None or outcome.staged or not self.queue.still_ours(outcome.delivery):
            return  # (a job taken over by another worker: commit() reports LeaseLost)
        data = outcome.encoded if outcome.encoded is not None else result_bytes(outcome.result)
        self.results.write_result(outcome.result["job_id"], data)
        outcome.staged, outcome.encoded = True, None

    def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Results first (one directory fsync for all), then each idempotency record, then each
        job file's archive: a crash in between leaves the job in the processing dir, recovered
        like a crash while it ran.  A job another worker took over meanwhile gets LeaseLost and
        nothing of it is stored (its new owner's result stays)."""
        self._store_results(outcomes)
        for o in outcomes:
            if o.error is None:
                self._acknowledge(o)
        self.results.committed()

    def _store_results(self, outcomes: Sequence[Outcome]) -> None:
        stored = []
        for o in outcomes:
            if not self.queue.still_ours(o.delivery):
                o.error = self.queue.fenced(o.delivery)
                continue
            if o.result is None:
                continue
            try:
                self.stage_result(o)
                stored.append(o)
            except (OSError, TypeError, ValueError) as exc:
                o.error = exc
        if stored:
            try:
                self.results.sync_dir()
            except OSError as exc:
                for o in stored:
                    o.error = exc

    def _acknowledge(self, o: Outcome) -> None:
        """Settle the key, then archive (or give back) the job file; its cancel marker goes."""
        try:
            if o.idempotency_key:
                self.keys.settle(o)
            if o.release:
                self.queue.release(o.delivery)
            else:
                self.queue.archive(o.delivery, o.failed, o.reason)
        except OSError as exc:
            o.error = exc
            return
        if o.delivery.job_id is not None:
            self.cancels.settled(o.delivery.job_id)

    # -- dead letters -------------------------------------------------------------------
    def dead_list(self, limit: int = 100, page_token: str | None = None) -> DeadPage:
        return self.dead.dead_list(limit, page_token)

    def dead_get(self, entry: str) -> DeadLetter | None:
        return self.dead.dead_get(entry)

    def dead_requeue(self, entry: str) -> DeadRequeue:
        return self.dead.dead_requeue(entry)

    def dead_purge(self, entry: str) -> bool:
        return self.dead.dead_purge(entry)

    # -- cancel -------------------------------------------------------------------------
    def cancel(self, job_id: str, cancelled: CancelledDocuments) -> str:
        """A waiting job file is claimed and committed as cancelled with the documents
        ``cancelled`` builds (result file, then the job file to failed/ with the reason); a
        running one gets a marker in jobs/.cancel/ unless its document forbids it."""
        for _ in range(_CANCEL_LOOKS):  # the job may move between looking and acting: look again
            found = self.index.locate(job_id)
            if found is None:
                if self.results.result_or_none(job_id) is not None:
                    return "finished"
                if self.index.job_status(job_id) is None:
                    return "not_found"
                continue
            status, path, _worker = found
            if status == "pending" and os.path.dirname(path) == self.layout.jobs_dir:
                if self._cancel_waiting(job_id, os.path.basename(path), cancelled):
                    return "cancelled"
                continue
            if not job_facts(read_json(path)).cancellable:
                return "not_cancellable"
            self.cancels.request(job_id)
            return "cancelling"
        return "cancelling"

    def _cancel_waiting(self, job_id: str, name: str, cancelled: CancelledDocuments) -> bool:
        """Claim jobs/NAME and commit it as cancelled; False when another worker took it first."""
        if not self.lock.held:
            raise TransportUnavailable("cancelling a waiting job needs an open transport")
        delivery: FileDelivery | None = self.queue.claim(name)
        if delivery is None:
            return False
        delivery.job_id = job_id
        doc = read_json(delivery.path)
        doc = doc if isinstance(doc, dict) else None
        facts = job_facts(doc)
        try:
            result, reason = cancelled(QueuedJob(job_id, name, self.worker_id, doc, facts.operation,
                                                 facts.attempt))
        except BaseException:
            self.queue.release(delivery)
            raise
        outcome = Outcome(delivery, "cancelled", result=result, reason=reason, failed=True)
        self.commit([outcome])
        if outcome.error is not None:
            self.queue.release(delivery)
            raise TransportUnavailable(f"cannot store the cancelled result: {outcome.error}")
        return True
