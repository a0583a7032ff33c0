"""Removal of the temp files a killed worker leaves behind.

:func:`guestkit_worker.system.atomic.write_bytes` writes ``.{name}.{pid}.{n}.tmp`` beside its target
and renames it into place.  A worker killed (SIGKILL, power loss) between the two leaves that
temp file behind for good: scans never pick it up (hidden, not ``*.json``), but it stays in
``results/``, ``results/.idempotency/``, ``jobs/`` (re-queued attempts, ``submit``) or
``jobs/failed/`` (reason files).  :func:`sweep_temp_files` removes such leftovers; the worker
runs it when it opens its directories and, as a daemon, every TEMP_SWEEP_INTERVAL_SECONDS.

Age, not the pid in the name, decides: several workers on several hosts may share these
directories, so a pid says nothing about whether its writer still lives (it may be another
host's process, or a reused number).  A write takes milliseconds from create to rename, so a
temp file whose mtime is TEMP_FILE_MAX_AGE_SECONDS old belongs to nobody.  (On a shared
network file system the mtime comes from the server's clock: keep the hosts' clocks within
a few minutes of it.)

Only regular files whose name matches the pattern exactly are removed: never a link (not
followed either), a directory, or a producer's ``NAME.tmp``.
"""

import logging
import os
import re
import stat
import time

log = logging.getLogger(__name__)

#: A temp file this old (by mtime) is a leftover: a write holds it for milliseconds.
TEMP_FILE_MAX_AGE_SECONDS = 600.0
#: How often a daemon sweeps again (leftovers of a worker killed meanwhile, here or elsewhere).
TEMP_SWEEP_INTERVAL_SECONDS = 300.0

#: exactly atomic.write_bytes' temp names: leading dot, the target's name, pid, counter, .tmp
TEMP_NAME_RE = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.(?P<n>[0-9]+)\.tmp", re.DOTALL)


def is_temp_name(name):
    """True when name is one atomic.write_bytes gives its temp files."""
    return TEMP_NAME_RE.fullmatch(name) is not None


def sweep_temp_files(directories, *, max_age=TEMP_FILE_MAX_AGE_SECONDS, now=None):
    """Remove atomic-write leftovers older than max_age seconds from each directory (not below
    it); return the paths removed.  Errors are logged, never raised."""
    now = time.time() if now is None else now
    removed = []
    for directory in directories:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if is_temp_name(e.name)]
        except OSError as exc:
            log.warning("cannot look for stale temp files in %s: %s", directory, exc)
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)  # lstat: a link is judged as a link
            except OSError:
                continue  # renamed into place or removed meanwhile
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < max_age:
                continue
            try:
                os.unlink(entry.path)  # removes the name; never follows anything
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot remove stale temp file %s: %s", entry.path, exc)
                continue
            log.warning("removed stale temp file %s (%.0f s old, left by an interrupted write)",
                        entry.path, now - st.st_mtime)
            removed.append(entry.path)
    return removed
