"""Helpers shared by the disk-image handlers: formats, payload checks, file helpers (outputs are
written through :mod:`guestkit_worker.engines.outputs`)."""

import logging
import os
import stat

from ..job.errors import HandlerError, JobValidationError
from .outputs import is_own_output

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhdx", "vpc")


def require_dict(data, field, required=True):
    """Return data[field-last-part] checked to be a dict (or None when optional and absent)."""
    if data is None:
        if required:
            raise JobValidationError(field, "is required")
        return None
    if not isinstance(data, dict):
        raise JobValidationError(field, f"must be an object, got {type(data).__name__}")
    return data


def require_bool(value, field, default):
    """A boolean payload field; absent (None) means default."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise JobValidationError(field, f"must be true or false, got {value!r}")
    return value


def require_format(value, field, default=None):
    """One of IMAGE_FORMATS (case-insensitive); absent means default, or an error without one."""
    if value is None:
        if default is None:
            raise JobValidationError(field, f"is required: one of {', '.join(IMAGE_FORMATS)}")
        return default
    if not isinstance(value, str) or value.strip().lower() not in IMAGE_FORMATS:
        raise JobValidationError(field, f"unknown image format {value!r}; known: {', '.join(IMAGE_FORMATS)}")
    return value.strip().lower()


def require_path(path, field):
    """A non-empty path string without NUL bytes; looks at nothing on the file system."""
    if not isinstance(path, str) or not path.strip():
        raise JobValidationError(field, "must be a non-empty path")
    if "\0" in path:
        raise JobValidationError(field, "must not contain NUL bytes")
    return path


def require_image_file(path, field):
    """The path must name an existing readable regular file or block device; returns it.

    With --allow-path, check the path against the policy before calling this (its errors
    tell whether something exists there)."""
    require_path(path, field)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise JobValidationError(field, f"{path} does not exist") from None
    except OSError as exc:
        raise JobValidationError(field, f"cannot stat {path}: {exc.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise JobValidationError(field, f"{path} is not a regular file or block device")
    if not os.access(path, os.R_OK):
        raise JobValidationError(field, f"{path} is not readable by the worker")
    return path


def image_size(path):
    """Size in bytes of a regular file or block device."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def check_destination(dest, field, overwrite, job_id=None):
    """Refuse a destination that exists (unless overwrite, or it is job_id's own earlier
    output: engines.outputs.is_own_output), is a directory or has no parent."""
    if os.path.isdir(dest):
        raise HandlerError("OUTPUT_EXISTS", f"{field}: {dest} is a directory", phase="validation")
    if os.path.lexists(dest) and not overwrite and not (job_id and is_own_output(dest, job_id)):
        raise HandlerError("OUTPUT_EXISTS",
                           f"{field}: {dest} already exists; set overwrite: true to replace it",
                           phase="validation", details={"path": dest})
    parent = os.path.dirname(dest) or "."
    if not os.path.isdir(parent):
        raise HandlerError("OUTPUT_DIR_MISSING", f"{field}: directory {parent} does not exist",
                           phase="validation", details={"path": dest})


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    try:
        fsync_path(path)
    except OSError as exc:  # some filesystems refuse fsync on directories
        log.debug("fsync of directory %s failed: %s", path, exc)


def remove_quietly(path, job_id="-"):
    """Delete a file if it exists; never raises."""
    try:
        os.unlink(path)
        log.info("job %s: removed partial output %s", job_id, path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("job %s: cannot remove %s: %s", job_id, path, exc)
