"""Path policy: --allow-path confinement and protection of the worker's own directories.

Without --allow-path every image and output path a job names is refused (PATH_NOT_ALLOWED,
the message names the flag); ``--allow-path /`` allows every path.  A path is judged in two
steps.  First without touching the file system: the path made
absolute, with ``..`` folded away as text, must lie inside an allowed directory (as given, or
as it resolves).  A path outside is refused with the same words whether or not anything
exists there, so a job learns nothing about the file system outside the allowed directories.
Only then is it resolved (symbolic links followed): the resolved path must still lie inside
an allowed directory, and an output must not lie inside one of the worker's own directories.

Handlers call this while validating a payload (:func:`validate_path`, before any other look
at the path), so a refusal ends the job as ``rejected``; :func:`check_path` repeats the check
when the handler runs, with the path resolved again at that moment.
"""

import os

from ..job.errors import HandlerError, JobValidationError

CODE = "PATH_NOT_ALLOWED"


def _inside(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


#: The refusal when no --allow-path is set: secure by default, every job path is refused.
NO_POLICY = ("is refused: no --allow-path is set, so jobs may name no image or output path "
             "(give --allow-path DIR; --allow-path / allows every path)")


def allows_everything(allowed):
    """True when the policy is ``--allow-path /`` (or a directory resolving to it)."""
    return bool(allowed) and any(os.path.realpath(a) == os.sep for a in allowed)


def refusal(path, *, allowed=None, protected=()):
    """(resolved path, None) when path may be used, else (None, the reason it may not).

    ``allowed`` None or empty refuses every path (no --allow-path: secure by default)."""
    if not allowed:
        return None, f"{path} {NO_POLICY}"
    given = [os.path.abspath(a) for a in allowed]
    resolved_roots = [os.path.realpath(a) for a in allowed]
    roots = ", ".join(dict.fromkeys(given))
    if not any(_inside(os.path.abspath(path), r) for r in given + resolved_roots):
        return None, f"{path} is outside the allowed directories ({roots})"
    real = os.path.realpath(path)
    if not any(_inside(real, r) for r in resolved_roots):
        return None, f"{path} leads outside the allowed directories ({roots}) through a symbolic link"
    for p in protected:
        if _inside(real, os.path.realpath(p)):
            return None, f"{path} leads inside the worker's own directory {p}"
    return real, None


def check_path(path, field, *, allowed=None, protected=()):
    """Return the resolved path, or raise HandlerError PATH_NOT_ALLOWED naming the field."""
    real, reason = refusal(path, allowed=allowed, protected=protected)
    if reason:
        raise HandlerError(CODE, f"{field}: {reason}", phase="validation", details={"field": field})
    return real


def validate_path(path, field, *, allowed=None, protected=()):
    """Return the resolved path, or raise JobValidationError PATH_NOT_ALLOWED (job rejected)."""
    real, reason = refusal(path, allowed=allowed, protected=protected)
    if reason:
        raise JobValidationError(field, reason, code=CODE)
    return real
