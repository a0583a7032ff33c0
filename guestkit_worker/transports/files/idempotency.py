"""Idempotency records of the file transport: results/.idempotency/SHA256(KEY).json holds the job
running a key (and its worker) or, once it completed, where its result is."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Callable

from ...system import atomic
from ..base import Outcome, Reservation
from .layout import Layout, json_bytes, read_json
from .results import FileResultStore

log = logging.getLogger(__name__)


class FileIdempotency:
    """Reservations of idempotency keys.

    results: where a completed key's result is read; worker_alive: whether the worker that
    holds a running reservation still lives (a dead one's is taken over)."""

    def __init__(self, layout: Layout, results: FileResultStore, worker_alive: Callable[[str], bool], *,
                 durable: bool) -> None:
        self.layout, self.results, self.worker_alive, self.durable = layout, results, worker_alive, durable

    def _path(self, key: str) -> str:
        return os.path.join(self.layout.idem_dir, hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises take-overs and releases of records (creation needs no lock: it is an
        exclusive link).  The lock is on the directory: no file of its own."""
        fd = os.open(self.layout.idem_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _running_record(self, key: str, job_id: str) -> bytes:
        return json_bytes({"key": key, "job_id": job_id, "state": "running",
                           "worker_id": self.layout.worker_id})

    def reserve(self, key: str, job_id: str) -> Reservation:
        path = self._path(key)
        try:
            atomic.write_bytes(path, self._running_record(key, job_id), durable=False, overwrite=False)
            return Reservation(True)
        except FileExistsError:
            pass
        with self._locked():
            rec = read_json(path)
            if isinstance(rec, dict) and rec.get("key") == key:
                holder, state = rec.get("job_id"), rec.get("state", "completed")
                if state == "completed":
                    earlier = self.results.result_or_none(holder) if isinstance(holder, str) else None
                    if earlier and earlier.get("status") == "completed":
                        return Reservation(False, holder, "completed", earlier)
                elif holder != job_id and self.worker_alive(str(rec.get("worker_id"))):
                    return Reservation(False, holder, "running")
            # free: no record, a stale one, or one whose completed result is gone
            atomic.write_bytes(path, self._running_record(key, job_id), durable=False)
            return Reservation(True)

    def release(self, key: str, job_id: str) -> None:
        path = self._path(key)
        with self._locked():
            rec = read_json(path)
            if (isinstance(rec, dict) and rec.get("job_id") == job_id and rec.get("state") == "running"
                    and rec.get("worker_id") == self.layout.worker_id):  # never another worker's hold
                os.unlink(path)

    def settle(self, o: Outcome) -> None:
        """Complete or release the outcome's key once its result is durable, before the job file
        is archived: a crash in between finds the key on recovery.  Trouble is logged only."""
        key, job_id = o.idempotency_key, o.delivery.job_id
        try:
            if o.status == "completed" and o.result is not None:
                rec = {"key": key, "job_id": job_id, "state": "completed",
                       "result": self.layout.result_path(job_id),
                       "completed_at": o.result.get("completed_at")}
                atomic.write_bytes(self._path(key), json_bytes(rec), durable=self.durable)
            else:
                self.release(key, job_id)
        except OSError as exc:
            log.error("job %s: cannot record idempotency key: %s", job_id, exc)
