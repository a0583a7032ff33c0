"""Finding jobs by id in the file transport: submit (never two jobs for one id), job_status and
list_jobs.  A job is found under its conventional file name JOB_ID.json (what ``submit`` and
the API write) or the alternate JOB_ID.N.json a give-back took when a producer had reused its
name (layout.ALTERNATE_NAMES), always by name: jobs/ is never listed for one id.  A job file
placed under another name by a producer still runs, but only its result is found by id."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ...job.facts import job_facts
from ...job.states import FINAL_STATUSES
from ...job.timestamps import stamp
from ...system import atomic
from ..base import InvalidPageToken, JobStatus, Page, SubmitReceipt, job_bytes
from .layout import RUNNING_SUFFIX, Layout, alternate_names, read_json
from .liveness import lock_held
from .results import FileResultStore

_RESULT_SUFFIX = "-result.json"
_LOOKUPS = 3  # looks before a job is called unknown (each sees any one move)


def _names_of(job_id: str) -> list:
    """The names a waiting job file of this id is found under, in the order they are probed."""
    return [f"{job_id}.json"] + alternate_names(job_id)


class FileIndex:
    """Jobs of one jobs and results directory, by id.

    results: where stored results are read; max_job_bytes: the largest job file submit
    writes; durable: fsync what submit writes."""

    def __init__(self, layout: Layout, results: FileResultStore, *, max_job_bytes: int,
                 durable: bool) -> None:
        self.layout, self.results = layout, results
        self.max_job_bytes, self.durable = max_job_bytes, durable

    # -- locating -----------------------------------------------------------------------
    def locate(self, job_id: str) -> tuple | None:
        """(status, path, worker_id) of a job file waiting or held by a worker, or None.

        The workers' dirs are looked at before jobs/ and again after it: a job claimed
        (jobs/ -> processing/) between the first two looks is seen by the third, and one given
        back (processing/ -> jobs/) between them is seen in jobs/."""
        found = self._held_by_worker(job_id)
        if found is None:
            found = self._in_jobs_dir(job_id)
        if found is None:
            found = self._held_by_worker(job_id)
        return found

    def _held_by_worker(self, job_id: str) -> tuple | None:
        L = self.layout
        try:
            holders = [e for e in os.listdir(L.processing_root) if not e.endswith(".lock")]
        except OSError:
            holders = []
        for worker in holders:
            base = os.path.join(L.processing_root, worker, f"{job_id}.json")
            if os.path.lexists(base + RUNNING_SUFFIX):
                return "running", base + RUNNING_SUFFIX, worker
            if os.path.lexists(base):
                return "pending", base, worker
        return None

    def _in_jobs_dir(self, job_id: str) -> tuple | None:
        """Its job file waiting in jobs/, probed by name: JOB_ID.json, or an alternate name a
        give-back took (layout.ALTERNATE_NAMES); jobs/ is never listed, so submit and status
        cost the same with 10 or 100,000 jobs waiting."""
        jobs = self.layout.jobs_dir
        for name in _names_of(job_id):
            path = os.path.join(jobs, name)
            if os.path.lexists(path):
                return "pending", path, None
        return None

    def _archived_doc(self, job_id: str) -> Any:
        found = self._archived(job_id)
        return found[0] if found else None

    def _archived(self, job_id: str) -> tuple | None:
        """(document, path) of the job's archived job file in done/ or failed/, or None."""
        for d in (self.layout.done_dir, self.layout.failed_dir):
            path = os.path.join(d, f"{job_id}.json")
            doc = read_json(path)
            if doc is not None:
                return doc, path
        return None

    # -- submit -------------------------------------------------------------------------
    def submit(self, doc: Mapping[str, Any], raw: bytes | None = None) -> SubmitReceipt:
        """Write JOB_ID.json with the bytes that were validated (``raw``), or the document as
        one line: never a form larger than what workers read (--max-job-size)."""
        job_id = doc["job_id"]
        data = job_bytes(doc, raw, self.max_job_bytes)
        L = self.layout
        found = self.locate(job_id)
        if found is not None:
            return self._receipt(job_id, read_json(found[1]), doc, found[0], found[1])
        result = self.results.result_or_none(job_id)
        if result is not None:
            return self._receipt(job_id, self._archived_doc(job_id), doc, str(result.get("status")),
                                 L.result_path(job_id))
        dest = os.path.join(L.jobs_dir, f"{job_id}.json")
        try:
            atomic.write_bytes(dest, data, mode=0o640, overwrite=False, durable=self.durable)
        except FileExistsError:
            return self._receipt(job_id, read_json(dest), doc, "pending", dest)
        return SubmitReceipt(job_id, "created", "pending", dest)

    @staticmethod
    def _receipt(job_id: str, stored: Any, doc: Mapping, status: str, where: str) -> SubmitReceipt:
        same = isinstance(stored, dict) and _canonical(stored) == _canonical(doc)
        return SubmitReceipt(job_id, "exists" if same else "conflict", status, where)

    # -- status -------------------------------------------------------------------------
    def job_status(self, job_id: str) -> JobStatus | None:
        for _ in range(_LOOKUPS):  # a job moved twice during one look (given back, claimed): look again
            status = self._job_status_once(job_id)
            if status is not None:
                return status
        return None

    def _job_status_once(self, job_id: str) -> JobStatus | None:
        found = self.locate(job_id)
        if found is not None:
            status, path, worker = found
            doc = read_json(path)
            doc = doc if isinstance(doc, dict) else {}
            facts = job_facts(doc)
            submitted = _mtime_stamp(path)  # a claim and a start are renames: they keep the mtime
            if status == "running":
                done = self._stored_outcome(job_id, facts.attempt)
                if done is not None:  # its result is stored, its job file not archived yet
                    done.submitted_at = submitted
                    return done
            return JobStatus(job_id, status, operation=doc.get("operation"), attempt=facts.attempt,
                             worker_id=worker, submitted_at=submitted,
                             started_at=_ctime_stamp(path) if status == "running" else None,
                             cancellable=facts.cancellable,
                             worker_gone=worker is not None and not lock_held(self.layout.lock_path(worker)))
        result = self.results.result_or_none(job_id)
        if result is None:
            return None
        status = _status_of_result(job_id, result)
        archived = self._archived(job_id)  # the result does not say when the job was submitted
        if archived is not None:
            status.submitted_at = _mtime_stamp(archived[1])
        return status

    def _stored_outcome(self, job_id: str, attempt: object) -> JobStatus | None:
        """The status of a running job's stored final result for this very attempt (the window
        between the result's commit and the job file's archive), or None.  A cancelled result is
        never taken: a shutdown's give-back leaves one behind for an attempt that runs again."""
        result = self.results.result_or_none(job_id)
        if not result or result.get("status") not in ("completed", "failed", "timeout"):
            return None
        summary = result.get("execution_summary")
        if not isinstance(summary, dict) or summary.get("attempt") != attempt:
            return None
        return _status_of_result(job_id, result)

    def list_jobs(self, *, status: str | None = None, operation: str | None = None,
                  limit: int = 100, page_token: str | None = None) -> Page:
        entries = {}
        for job_id, mtime in self._known():
            if job_id not in entries:  # live places come first
                entries[job_id] = mtime
        order = sorted(((m, j) for j, m in entries.items()), reverse=True)
        after = _decode_token(page_token)
        page, last = Page(), None
        for mtime, job_id in order:
            if after is not None and (mtime, job_id) >= after:
                continue
            st = self.job_status(job_id)
            if st is None or (status and st.status != status) or (operation and st.operation != operation):
                continue
            if len(page.jobs) == limit:
                page.next_page_token = _encode_token(last)
                break
            page.jobs.append(st)
            last = (mtime, job_id)
        return page

    def _known(self) -> Iterable[tuple]:
        """(job_id, mtime_ns) of every job found by id: held, waiting, then with a result."""
        L = self.layout
        dirs = []
        with contextlib.suppress(OSError):
            dirs = [os.path.join(L.processing_root, e) for e in os.listdir(L.processing_root)
                    if not e.endswith(".lock")]
        for d in dirs + [L.jobs_dir]:
            try:
                with os.scandir(d) as it:
                    entries = [e for e in it if not e.name.startswith(".")]
            except OSError:
                continue
            for e in entries:
                name = e.name[:-len(RUNNING_SUFFIX)] if e.name.endswith(RUNNING_SUFFIX) else e.name
                if not name.endswith(".json"):
                    continue
                job_id = name[:-len(".json")]
                head, _, tail = job_id.rpartition(".")
                if head and tail.isdigit():
                    job_id = head
                yield job_id, _mtime_ns(e)
        try:
            with os.scandir(L.results_dir) as it:
                for e in it:
                    if e.name.endswith(_RESULT_SUFFIX) and not e.name.startswith("."):
                        yield e.name[:-len(_RESULT_SUFFIX)], _mtime_ns(e)
        except OSError:
            pass


def _canonical(doc: Mapping) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _mtime_ns(entry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return 0


def _mtime_stamp(path: str) -> str | None:
    """When a job file was submitted: its mtime, set when it was written into jobs/ (by
    ``submit``, the API or a producer's rename) and kept by every later rename (claim, start,
    archive) and by a retry's rewrite (:meth:`FileQueue.retry`)."""
    try:
        return stamp(os.lstat(path).st_mtime)
    except OSError:
        return None


def _ctime_stamp(path: str) -> str | None:
    """When a held job file was started: the inode change time its rename to NAME.running set
    (the last change made to it)."""
    try:
        return stamp(os.lstat(path).st_ctime)
    except OSError:
        return None


def _status_of_result(job_id: str, result: dict) -> JobStatus:
    status = result.get("status")
    error = result.get("error") if isinstance(result.get("error"), dict) else None
    if status == "failed" and error and error.get("phase") == "validation":
        status = "rejected"
    if status not in FINAL_STATUSES:
        status = "failed"
    summary = result.get("execution_summary") if isinstance(result.get("execution_summary"), dict) else {}
    return JobStatus(job_id, status, operation=result.get("operation"), attempt=summary.get("attempt"),
                     worker_id=result.get("worker_id"), started_at=summary.get("started_at"),
                     completed_at=result.get("completed_at") or result.get("failed_at"), error=error)


#: the longest job id a page token holds (a file name's 255 bytes)
_MAX_NAME = 255
#: the longest page token: base64 of [mtime_ns, a 255-byte name with each byte as \uXXXX] is 2,074
_MAX_TOKEN = 2100


def _encode_token(pos: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(pos)).encode()).decode().rstrip("=")


def _decode_token(token: str | None) -> tuple | None:
    """(mtime_ns, job_id) of a token that _encode_token made; InvalidPageToken for anything
    else (the token comes from a client: any length, nesting, number or type)."""
    if not token:
        return None
    try:
        if len(token) > _MAX_TOKEN:
            raise ValueError(token)
        pos = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, RecursionError):  # binascii and UTF-8 errors are ValueErrors
        raise InvalidPageToken() from None
    if not (isinstance(pos, list) and len(pos) == 2 and type(pos[0]) is int and 0 <= pos[0] < 2 ** 64
            and isinstance(pos[1], str) and 0 < len(pos[1]) <= _MAX_NAME):
        raise InvalidPageToken()
    return pos[0], pos[1]
