"""Checks made at the door, before a job is claimed: the directories a command was given.

Each failure is a :class:`~guestkit_worker.job.errors.ConfigError` whose message names the flag,
the path and what is wrong with it, so the CLI can print one line and exit 2.
"""

import logging
import os
import tempfile
from typing import Optional

from ..job.errors import ConfigError

log = logging.getLogger(__name__)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def existing_dir(flag: str, path: str) -> str:
    """``path`` must already be a directory (``submit --jobs-dir``: a typo is not created)."""
    if not os.path.exists(path):
        raise ConfigError(f"{flag} {path}: no such directory")
    if not os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: exists but is not a directory")
    return path


def prepare_dir(flag: str, path: str) -> Optional[str]:
    """``path`` must be a directory; a missing one is created when its parent exists.

    Returns the path when it was created (and logs it), None when it was there already.
    A missing parent is refused: it is far more likely a typo than a wish for a new tree.
    """
    if os.path.isdir(path):
        return None
    if os.path.lexists(path):
        raise ConfigError(f"{flag} {path}: exists but is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: no such directory, and its parent {parent} does not exist either")
    try:
        os.mkdir(path, 0o770)
    except FileExistsError:  # another worker made it meanwhile
        if os.path.isdir(path):
            return None
        raise ConfigError(f"{flag} {path}: exists but is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create it: {_why(exc)}") from None
    log.info("created %s directory %s", flag.lstrip("-").replace("-dir", ""), path)
    return path


def writable_dir(flag: str, path: str) -> str:
    """``path`` must be a directory in which this process can create (and remove) a file.

    Checked by doing it, not with access(2): root, ACLs, read-only mounts and full disks all
    answer the real question only then.
    """
    existing_dir(flag, path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".guestkit_worker.probe.", dir=path)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create a file there: {_why(exc)}") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot remove a file there: {_why(exc)}") from None
    return path
