"""The file transport's dead letters (:class:`FileDeadLetters`): job files that never became a
job.  A worker rejects such a file without a result (unreadable, over --max-job-size, not
JSON, no job id, or a job id another job file holds) and archives it in ``jobs/failed/`` with
``NAME.reason.json`` beside it; those with ``status: rejected`` and no job id (or the
``DUPLICATE_JOB_ID`` code) are the dead letters.  A dead letter's entry is its file name in
failed/ with ``%`` and every byte outside printable ASCII escaped as ``%XX`` (a name that is not
UTF-8, or has other scripts, is still listed and addressed; each name has one spelling).

A requeue renames the file back into jobs/ (one atomic rename: the file is either a dead
letter or a waiting job, never both nor neither), flushes jobs/, then removes the reason."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from urllib.parse import quote, unquote_to_bytes

from ...job.deadletters import job_id_of, rejection_reason
from ...job.errors import JobFileError
from ...job.timestamps import stamp
from ...system import atomic
from ..base import DeadLetter, DeadPage, DeadRequeue, InvalidPageToken
from .jobfile import read_job_file
from .layout import MAX_NAME_BYTES, Layout, alternate_names, read_json

REASON_SUFFIX = ".reason.json"
#: a page token: the last entry's reason file time (ns) and its entry
_TOKEN = re.compile(r"([0-9]{1,20}):([ -~]{1,765})")
#: longest file name looked up in failed/ (bytes)
_MAX_NAME = 255
#: the characters an entry keeps as they are (printable ASCII but ``%`` and ``/``)
_KEPT = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%/")


def _is_dead(reason: object) -> bool:
    """True for the reason document of a job file rejected without ever becoming a job."""
    if not isinstance(reason, dict) or reason.get("status") != "rejected":
        return False
    error = reason.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return reason.get("job_id") is None or code == "DUPLICATE_JOB_ID"


def _safe(name: object) -> bool:
    """A plain name of a file in failed/ (no path, no dot file, no reason file, no NUL)."""
    return (isinstance(name, str) and 0 < len(os.fsencode(name)) <= _MAX_NAME and "/" not in name
            and "\x00" not in name and not name.startswith(".") and not name.endswith(REASON_SUFFIX))


def entry_of(name: str) -> str:
    """The entry of file name ``name``: printable ASCII, ``%XX`` for ``%`` and other bytes."""
    return quote(os.fsencode(name), safe=_KEPT)


def name_of(entry: object) -> str | None:
    """The file name an entry spells (only its one spelling), or None."""
    if not isinstance(entry, str) or not 0 < len(entry) <= 3 * _MAX_NAME or not entry.isascii():
        return None
    raw = unquote_to_bytes(entry)
    name = os.fsdecode(raw)
    return name if _safe(name) and quote(raw, safe=_KEPT) == entry else None


class FileDeadLetters:
    """The dead letters of one jobs directory; max_job_bytes: the largest document read;
    durable: flush jobs/ after a requeue's rename."""

    def __init__(self, layout: Layout, *, max_job_bytes: int, durable: bool) -> None:
        self.layout, self.max_job_bytes, self.durable = layout, max_job_bytes, durable

    def _path(self, entry: str) -> str:
        return os.path.join(self.layout.failed_dir, entry)

    def _candidates(self) -> list:
        """(reason file time ns, entry name) of every archived file with a reason, newest first."""
        found = []
        try:
            with os.scandir(self.layout.failed_dir) as it:
                for e in it:
                    if e.name.endswith(REASON_SUFFIX) and _safe(e.name[:-len(REASON_SUFFIX)]):
                        with contextlib.suppress(OSError):
                            found.append((e.stat(follow_symlinks=False).st_mtime_ns,
                                          e.name[:-len(REASON_SUFFIX)]))
        except FileNotFoundError:
            return []
        found.sort(reverse=True)
        return found

    def _letter(self, entry: str, mtime_ns: int | None = None) -> DeadLetter | None:
        """The dead letter of file name ``entry`` (without its bytes), or None when it is none."""
        reason = read_json(self._path(entry) + REASON_SUFFIX)
        if not _is_dead(reason) or not os.path.lexists(self._path(entry)):
            return None
        error = reason.get("error")
        detail = str(error.get("message", "")) if isinstance(error, dict) else ""
        at = reason.get("at")
        if not isinstance(at, str):
            if mtime_ns is None:
                mtime_ns = os.lstat(self._path(entry) + REASON_SUFFIX).st_mtime_ns
            at = stamp(mtime_ns / 1e9)
        job_id = reason.get("job_id") if isinstance(reason.get("job_id"), str) else None
        return DeadLetter(entry_of(entry), rejection_reason(error, job_id), detail, job_id, at)

    def dead_list(self, limit: int = 100, page_token: str | None = None) -> DeadPage:
        """Newest first (by the time the reason was written); the token is that time and the
        name of the last entry shown."""
        limit = max(1, min(int(limit), 1000))
        after = None
        if page_token:
            found = _TOKEN.fullmatch(page_token)
            if found is None:
                raise InvalidPageToken()
            name = name_of(found.group(2))
            if name is None:
                raise InvalidPageToken()
            after = (int(found.group(1)), name)
        letters: list = []
        last = None
        for ns, name in self._candidates():
            if after is not None and (ns, name) >= after:
                continue
            letter = self._letter(name, ns)
            if letter is None:
                continue
            if len(letters) == limit:
                return DeadPage(letters, f"{last[0]}:{entry_of(last[1])}")
            letters.append(letter)
            last = (ns, name)
        return DeadPage(letters, None)

    def dead_get(self, entry: str) -> DeadLetter | None:
        """The dead letter with its bytes; ``raw`` None when the file cannot be read as a job
        file (a link, a FIFO, over --max-job-size: its reason says which)."""
        entry = name_of(entry)
        if entry is None:
            return None
        letter = self._letter(entry)
        if letter is None:
            return None
        try:
            letter.raw = read_job_file(self._path(entry), entry, self.max_job_bytes)
        except JobFileError as exc:
            letter.raw = None
            if letter.reason not in ("too_large", "unreadable"):
                letter.reason = "too_large" if "larger than the limit" in str(exc) else "unreadable"
                letter.detail = str(exc)
        if letter.job_id is None:
            letter.job_id = job_id_of(letter.raw, self.max_job_bytes)
        return letter

    def dead_requeue(self, entry: str) -> DeadRequeue:
        entry = name_of(entry)
        if entry is None or self._letter(entry) is None:
            return DeadRequeue("not_found")
        reason_doc = read_json(self._path(entry) + REASON_SUFFIX)
        job_file = reason_doc.get("job_file") if isinstance(reason_doc, dict) else None
        dst = None
        for dst in self._queue_names(job_file if _safe(job_file) else entry):
            try:
                atomic.rename_noreplace(self._path(entry), dst)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:  # purged or requeued by someone else meanwhile
                return DeadRequeue("not_found")
        if self.durable:
            atomic.fsync_dir(self.layout.jobs_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(entry) + REASON_SUFFIX)
        return DeadRequeue("queued", location=dst)

    def _queue_names(self, name: str) -> Iterator[str]:
        """Where a requeued file goes in jobs/: its name as it was submitted, then STEM.1.json
        ... STEM.4.json (found by id), then STEM.<time_ns>.json (never over another job file)."""
        jobs = self.layout.jobs_dir
        stem = name[:-len(".json")] if name.endswith(".json") else name
        stem = os.fsdecode(os.fsencode(stem)[:MAX_NAME_BYTES - 40])
        yield os.path.join(jobs, f"{stem}.json")
        for alternate in alternate_names(stem):
            yield os.path.join(jobs, alternate)
        while True:
            yield os.path.join(jobs, f"{stem}.{time.time_ns()}.json")

    def dead_purge(self, entry: str) -> bool:
        """Remove the file (a directory a producer had named NAME.json: with what it holds, no
        link followed), then its reason (a reason left alone is no dead letter)."""
        entry = name_of(entry)
        if entry is None or self._letter(entry) is None:
            return False
        path = self._path(entry)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(entry) + REASON_SUFFIX)
        if self.durable:
            atomic.fsync_dir(self.layout.failed_dir)
        return True
