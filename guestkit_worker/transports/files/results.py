"""The store half of the file transport: result files, progress files, idempotency records and
the group commit that stores outcomes and archives their job files in a crash-safe order."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

from ...system import atomic
from ..base import FINAL_STATUSES, Delivery, Outcome, Reservation
from .layout import json_bytes, read_json, result_bytes

log = logging.getLogger(__name__)


class FileResults:
    """Mixin of FileTransport: needs self.layout and self.durable."""

    def _init_results(self) -> None:
        self._results_fd = None                # kept open for the group commit's directory fsync
        self._committed = threading.Condition()
        self._generation = 0                   # bumped by every commit (wait_result wakes on it)
        self._cancel_seen: set = set()         # job ids whose cancel request was reported
        self._ids_fd: int | None = None     # the running-ids lock file, shared by hold_job_id
        self._ids_held: dict = {}              # locked byte -> job ids running here
        self._ids_lock = threading.Lock()

    # -- results ------------------------------------------------------------------------
    def encode_result(self, result: Mapping) -> bytes:
        return result_bytes(result)

    def get_result(self, job_id: str) -> dict | None:
        """The stored result; ValueError when the file holds JSON that is not an object (never
        written by a worker: judging it would be guessing)."""
        doc = read_json(self.layout.result_path(job_id))
        if doc is not None and not isinstance(doc, dict):
            raise ValueError(f"the stored result of {job_id} is not a JSON object")
        return doc

    def _result_or_none(self, job_id: str) -> dict | None:
        try:
            return self.get_result(job_id)
        except ValueError:
            return None

    def wait_result(self, job_id: str, timeout: float) -> dict | None:
        """Woken by commit() in this process; results stored by other workers are seen within
        half a second."""
        end = time.monotonic() + timeout
        while True:
            with self._committed:
                generation = self._generation
            result = self._result_or_none(job_id)
            left = end - time.monotonic()
            if (result is not None and result.get("status") in FINAL_STATUSES) or left <= 0:
                return result
            with self._committed:
                if self._generation == generation:
                    self._committed.wait(min(0.5, left))

    def stage_result(self, outcome: Outcome) -> None:
        """Write the outcome's result file now (fsynced, the directory not), so that commit()
        only needs one directory fsync for many outcomes."""
        if outcome.result is None or outcome.staged or not self._still_ours(outcome.delivery):
            return  # (a job taken over by another worker: commit() reports LeaseLost)
        data = outcome.encoded if outcome.encoded is not None else result_bytes(outcome.result)
        atomic.write_bytes(self.layout.result_path(outcome.result["job_id"]), data, durable=self.durable,
                           sync_dir=False)
        outcome.staged, outcome.encoded = True, None

    def _sync_results_dir(self) -> None:
        if not self.durable:
            return
        if self._results_fd is not None:
            os.fsync(self._results_fd)
        else:
            atomic.fsync_dir(self.layout.results_dir)

    def commit(self, outcomes: Sequence[Outcome]) -> None:
        """Results first (one directory fsync for all), then each idempotency record, then each
        job file's archive: a crash in between leaves the job in the processing dir, recovered
        like a crash while it ran.  A job another worker took over meanwhile gets LeaseLost and
        nothing of it is stored (its new owner's result stays)."""
        stored = []
        for o in outcomes:
            if not self._still_ours(o.delivery):
                o.error = self._lost(o.delivery)
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
                self._sync_results_dir()
            except OSError as exc:
                for o in stored:
                    o.error = exc
        for o in outcomes:
            if o.error is not None:
                continue
            try:
                if o.idempotency_key:
                    self._settle_key(o)
                if o.release:
                    self.release(o.delivery)
                else:
                    self._archive(o.delivery, o.failed, o.reason)
            except OSError as exc:
                o.error = exc
                continue
            job_id = o.delivery.job_id
            if job_id is not None and job_id in self._cancel_seen:
                self._cancel_seen.discard(job_id)
                try:
                    os.unlink(os.path.join(self.layout.cancel_dir, job_id))
                except OSError:
                    pass
        with self._committed:
            self._generation += 1
            self._committed.notify_all()

    # -- progress -----------------------------------------------------------------------
    def append_progress(self, job_id: str, event: Mapping) -> None:
        path = self.layout.progress_path(job_id)
        try:
            atomic.append_line(path, json.dumps(event))
        except OSError as exc:
            log.warning("job %s: cannot append progress to %s: %s", job_id, path, exc)

    def read_progress(self, job_id: str, after: int = 0) -> list:
        try:
            fd = os.open(self.layout.progress_path(job_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return []
        events = []
        for line in lines[after:]:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return events

    # -- idempotency --------------------------------------------------------------------
    def _idem_path(self, key: str) -> str:
        return os.path.join(self.layout.idem_dir, hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json")

    @contextmanager
    def _idem_lock(self):
        """Serialises take-overs and releases of records (creation needs no lock: it is an
        exclusive link)."""
        fd = os.open(self.layout.idem_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # no file of its own
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _running_record(self, key: str, job_id: str) -> bytes:
        return json_bytes({"key": key, "job_id": job_id, "state": "running", "worker_id": self.layout.worker_id})

    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        path = self._idem_path(key)
        try:
            atomic.write_bytes(path, self._running_record(key, job_id), durable=False, overwrite=False)
            return Reservation(True)
        except FileExistsError:
            pass
        with self._idem_lock():
            rec = read_json(path)
            if isinstance(rec, dict) and rec.get("key") == key:
                holder, state = rec.get("job_id"), rec.get("state", "completed")
                if state == "completed":
                    earlier = self._result_or_none(holder) if isinstance(holder, str) else None
                    if earlier and earlier.get("status") == "completed":
                        return Reservation(False, holder, "completed", earlier)
                elif holder != job_id and self.worker_alive(str(rec.get("worker_id"))):
                    return Reservation(False, holder, "running")
            # free: no record, a stale one, or one whose completed result is gone
            atomic.write_bytes(path, self._running_record(key, job_id), durable=False)
            return Reservation(True)

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        path = self._idem_path(key)
        with self._idem_lock():
            rec = read_json(path)
            if isinstance(rec, dict) and rec.get("job_id") == job_id and rec.get("state") == "running":
                os.unlink(path)

    # -- running job ids ----------------------------------------------------------------
    def hold_job_id(self, delivery: Delivery) -> bool:
        """An exclusive lock on one byte of ``jobs/.processing/.running-ids.lock``, at an
        offset drawn from the job id's hash (an open-file-description lock, so other workers'
        locks exclude it whatever their process).  Nothing is written: no disk cost per job,
        and the kernel drops the lock when its holder dies.  This worker's running ids share one
        descriptor, opened once: they exclude each other here, in memory."""
        job_id = delivery.job_id
        offset = _offset(job_id)
        with self._ids_lock:
            held = self._ids_held.get(offset)
            if held is None:
                if self._ids_fd is None:
                    self._open_job_ids()
                try:
                    fcntl.fcntl(self._ids_fd, _F_OFD_SETLK, _byte_lock(fcntl.F_WRLCK, offset))
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        delivery.id_busy = True
                        return False
                    raise
                held = self._ids_held[offset] = set()
            elif job_id in held:
                delivery.id_busy = True
                return False
            held.add(job_id)  # (another id whose byte this is runs here too: it is locked already)
        delivery.id_lock = (offset, job_id)
        return True

    def _drop_job_id(self, delivery: Delivery) -> None:
        """End delivery's hold of its job id (acknowledged, retried or released)."""
        lock = getattr(delivery, "id_lock", None)
        if lock is None:
            return
        delivery.id_lock = None
        offset, job_id = lock
        with self._ids_lock:
            held = self._ids_held.get(offset)
            if held is None:
                return
            held.discard(job_id)
            if held:
                return
            del self._ids_held[offset]
            if self._ids_fd is not None:
                fcntl.fcntl(self._ids_fd, _F_OFD_SETLK, _byte_lock(fcntl.F_UNLCK, offset))

    def _open_job_ids(self) -> None:
        """Open the running-ids lock file (at open(), so the worker's descriptors stay constant)."""
        self._ids_fd = os.open(self.layout.running_ids_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                               0o600)

    def _close_job_ids(self) -> None:
        with self._ids_lock:
            if self._ids_fd is not None:
                os.close(self._ids_fd)  # drops every lock still held
                self._ids_fd = None
            self._ids_held.clear()

    def _settle_key(self, o: Outcome) -> None:
        """Complete or release the outcome's key once its result is durable, before the job file
        is archived: a crash in between finds the key on recovery."""
        key, job_id = o.idempotency_key, o.delivery.job_id
        try:
            if o.status == "completed" and o.result is not None:
                rec = {"key": key, "job_id": job_id, "state": "completed",
                       "result": self.layout.result_path(job_id), "completed_at": o.result.get("completed_at")}
                atomic.write_bytes(self._idem_path(key), json_bytes(rec), durable=self.durable)
            else:
                self.release_idempotency_key(key, job_id)
        except OSError as exc:
            log.error("job %s: cannot record idempotency key: %s", job_id, exc)

    # -- health -------------------------------------------------------------------------
    def health(self) -> dict:
        return {"jobs_dir": _probe_dir(self.layout.jobs_dir, readable=True),
                "results_dir": _probe_dir(self.layout.results_dir, readable=False)}


#: Linux's F_OFD_SETLK (Python 3.9+ names it); struct flock: type, whence, start, len, pid
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = "hhqqi4x"


def _offset(job_id: str) -> int:
    """The byte of job_id: 62 bits of its SHA-256 (a collision between two ids running in two
    workers at once only makes one of them wait)."""
    return int.from_bytes(hashlib.sha256(job_id.encode("utf-8")).digest()[:8], "big") >> 2


def _byte_lock(kind: int, offset: int) -> bytes:
    """The struct flock of one byte."""
    return struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0)


def _probe_dir(path: str, readable: bool) -> tuple:
    """(ok, detail) after really listing and creating a file in path (access() lies for root).
    The probe file gets an unpredictable name, created exclusively (O_EXCL never follows a
    link), so nothing planted in the directory is followed or truncated."""
    try:
        if readable:
            os.listdir(path)
        fd, probe = tempfile.mkstemp(prefix=".health-", suffix=".probe", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return False, exc.strerror or str(exc)
    return True, "listed and written" if readable else "written"
