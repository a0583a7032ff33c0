"""Atomic file writes: temp file in the same directory, fsync, rename, fsync of the directory."""

import contextlib
import ctypes
import errno
import os

_counter = iter(range(1 << 62))
_pid = [os.getpid()]  # part of temp names; kept current across fork without a getpid() per write
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path, data, *, mode=0o640, durable=True, overwrite=True, sync_dir=True):
    """Write data to path so that a reader sees either the old file or the whole new one.

    The temp name starts with '.' and ends with '.tmp', so a directory scan for '*.json'
    never picks it up.  Nothing half-written is left behind when the write fails (ENOSPC,
    EACCES): the temp file is removed and the error re-raised.  With overwrite=False an
    existing file is never replaced (FileExistsError).  With sync_dir=False the caller
    fsyncs the directory itself (several files, one directory fsync).
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{_pid[0]}.{next(_counter)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError instead of replacing
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(directory or ".")
    return path


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_renameat2 = None


def rename_noreplace(src, dst):
    """os.rename that raises FileExistsError instead of replacing dst (renameat2 with
    RENAME_NOREPLACE; where the kernel or file system lacks it, a check then a rename)."""
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (AttributeError, OSError):
            fn = False
        _renameat2 = fn
    if _renameat2:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def append_line(path, line):
    """Append one line of text to path (created 0640 before the umask, like results; a link
    planted at this name is not followed).  Lines of a few KiB land whole (O_APPEND)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)
