"""Atomic file writes: temp file in the same directory, fsync, rename, fsync of the directory."""

import json
import os

_counter = iter(range(1 << 62))


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path, data, *, mode=0o640, durable=True, overwrite=True):
    """Write data to path so that a reader sees either the old file or the whole new one.

    The temp name starts with '.' and ends with '.tmp', so a directory scan for '*.json'
    never picks it up.  Nothing half-written is left behind when the write fails (ENOSPC,
    EACCES): the temp file is removed and the error re-raised.  With overwrite=False an
    existing file is never replaced (FileExistsError).
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{next(_counter)}.tmp")
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
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(directory or ".")
    return path


def write_json(path, obj, **kwargs):
    """Serialise obj first (so a TypeError leaves no file), then write it atomically."""
    data = (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    return write_bytes(path, data, **kwargs)
