"""Path policy: --allow-path confinement and protection of the worker's own directories."""

import os

from .errors import HandlerError


def _inside(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_path(path, field, *, allowed=None, protected=()):
    """Return the resolved path, or raise HandlerError PATH_NOT_ALLOWED naming the field."""
    real = os.path.realpath(path)
    if allowed is not None:
        roots = [os.path.realpath(a) for a in allowed]
        if not any(_inside(real, r) for r in roots):
            raise HandlerError("PATH_NOT_ALLOWED",
                               f"{field}: {path} resolves to {real}, outside the allowed directories "
                               f"({', '.join(roots)})")
    for p in protected:
        if _inside(real, os.path.realpath(p)):
            raise HandlerError("PATH_NOT_ALLOWED",
                               f"{field}: {path} resolves to {real}, inside the worker's own directory {p}")
    return real
