"""Reading one claimed job file: never following a link, never opening a FIFO, socket or device,
never reading more than the size limit."""

from __future__ import annotations

import errno
import json
import os
import stat

from ...job.errors import JobFileError
from .layout import MAX_NAME_BYTES

_LINK = "is a symbolic link; job files must be regular files (the link was not followed)"


def _kind(mode: int) -> str:
    return ("directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else
            "socket" if stat.S_ISSOCK(mode) else
            "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")


def read_job_file(path: str, name: str, max_bytes: int) -> bytes:
    """The bytes of the job file at path (named name in the queue); JobFileError when it cannot
    be a job.  The file sits in the reader's own processing directory, so nobody else swaps it
    between the lstat and the open."""
    size = len(os.fsencode(name))
    if size > MAX_NAME_BYTES:
        raise JobFileError("file", f"name is {size} bytes long; job file names may have at most "
                                   f"{MAX_NAME_BYTES} bytes")
    # look before opening: opening some devices has side effects
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise JobFileError("file", f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISLNK(st.st_mode):
            raise JobFileError("file", _LINK)
        raise JobFileError("file", f"is a {_kind(st.st_mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JobFileError("file", _LINK) from None
        if exc.errno == errno.EACCES:
            raise JobFileError("file", "permission denied reading the job file") from None
        raise JobFileError("file", f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise JobFileError("file", f"is a {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise JobFileError("file", f"is {st.st_size} bytes, larger than the limit of "
                                       f"{max_bytes} bytes (--max-job-size)")
        # one read of the size fstat reports (+1 to see a file still growing); a short read of
        # a regular file is its end
        want = min(st.st_size + 1, max_bytes + 1)
        data = os.read(fd, want)
        if len(data) < want:
            return data
        chunks, left = [data], max_bytes + 1 - len(data)
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise JobFileError("file", f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def peek_priority(path: str, max_bytes: int, default: int) -> int:
    """The ``execution.priority`` of a job file waiting in jobs/ (for the order of claims), or
    ``default`` when it has none or is no regular, readable, valid job file of at most
    ``max_bytes`` (admission judges it once claimed).  Opened without following a link or
    blocking on a FIFO, and only when lstat says it is a regular file (checked again by fstat)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return default
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return default
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return default
        doc = json.loads(os.read(fd, max_bytes + 1))
    except (OSError, ValueError, RecursionError):
        return default
    finally:
        os.close(fd)
    execution = doc.get("execution") if isinstance(doc, dict) else None
    priority = execution.get("priority") if isinstance(execution, dict) else None
    return priority if type(priority) is int and 1 <= priority <= 10 else default
