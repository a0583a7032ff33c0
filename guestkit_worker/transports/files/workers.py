"""The workers of one jobs directory, as the ``workers`` command lists them: every worker id
with a lock file or a processing dir under ``jobs/.processing/``, alive while its flock is
held, with the pool its lock file names, the job files it holds and the lock file's mtime as
its last sign of life (set at start and by every recovery pass, every 30 s)."""

from __future__ import annotations

import contextlib
import json
import os

from ...job.timestamps import stamp
from ..records import WorkerInfo
from .layout import RUNNING_SUFFIX, Layout, read_json
from .liveness import lock_held


def file_workers(layout: Layout) -> list:
    """A :class:`WorkerInfo` per worker id found, live ones first, then by id."""
    root = layout.processing_root
    try:
        entries = os.listdir(root)
    except OSError:
        return []
    ids = {e[:-len(".lock")] if e.endswith(".lock") else e for e in entries if not e.startswith(".")}
    found = [_worker(layout, worker_id) for worker_id in ids]
    return sorted(found, key=lambda w: (not w.alive, w.worker_id))


def _worker(layout: Layout, worker_id: str) -> WorkerInfo:
    lock = layout.lock_path(worker_id)
    info = WorkerInfo(worker_id, _pool_of(lock), lock_held(lock))
    with contextlib.suppress(OSError):
        info.last_seen = stamp(os.stat(lock).st_mtime)
    held = []
    with contextlib.suppress(OSError):
        held = [n for n in os.listdir(os.path.join(layout.processing_root, worker_id))
                if not n.startswith(".")]
    info.held = len(held)
    mine = os.path.join(layout.processing_root, worker_id)
    info.running = sorted(_job_id(os.path.join(mine, n)) for n in held if n.endswith(RUNNING_SUFFIX))
    return info


def _pool_of(lock: str) -> str | None:
    try:
        with open(lock, "rb") as fh:
            me = json.loads(fh.read(4096) or b"{}")
    except (OSError, ValueError):
        return None
    pool = me.get("pool") if isinstance(me, dict) else None
    return pool if isinstance(pool, str) else None


def _job_id(path: str) -> str:
    """The job id a held job file names (a producer may have named the file otherwise), or its
    file name when it cannot be read."""
    doc = read_json(path)
    job_id = doc.get("job_id") if isinstance(doc, dict) else None
    return job_id if isinstance(job_id, str) else os.path.basename(path)[:-len(RUNNING_SUFFIX)]
