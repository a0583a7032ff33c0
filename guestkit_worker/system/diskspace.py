"""The ``disk_space`` health check: free space and free inodes (``statvfs``) of the directories
the worker writes (results, jobs, work), each against a floor.

A directory below ``--min-free-space`` bytes or below :data:`MIN_FREE_INODES` free inodes makes
/health answer 503 naming ``disk_space``, so an orchestrator stops sending work before writes
start failing.  The detail names directories by role (``results``, ``jobs``, ``work``), never
by path.  A file system that reports no inode count (``f_files`` 0, as btrfs does) is judged on
space alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: free inodes below which a directory is reported as full (fixed)
MIN_FREE_INODES = 1000


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def check_disk_space(dirs: Mapping[str, str], min_free_bytes: int,
                     min_free_inodes: int = MIN_FREE_INODES) -> tuple[bool, str]:
    """(ok, detail) for the directories ``{role: path}``; a directory that cannot be read
    (statvfs fails) is reported as not ok with the error, not as a crash."""
    short, notes = [], []
    for role, path in dirs.items():
        try:
            st = os.statvfs(path)
        except OSError as exc:
            short.append(f"{role}: {exc.strerror or exc}")
            continue
        free = st.f_bavail * st.f_frsize
        inodes = st.f_favail if st.f_files else None
        text = f"{role} {_mib(free)}" + (f", {inodes} inodes" if inodes is not None else "")
        if free < min_free_bytes or (inodes is not None and inodes < min_free_inodes):
            short.append(text)
        else:
            notes.append(text)
    floor = f"(floor {_mib(min_free_bytes)}, {min_free_inodes} inodes)"
    if short:
        return False, f"low: {'; '.join(short)} {floor}"
    return True, f"free: {'; '.join(notes)} {floor}"
