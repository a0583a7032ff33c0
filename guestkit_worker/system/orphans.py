"""Child processes that outlive a dead worker: prevented where the kernel can, cleaned up where not.

* Prevented: every child a handler starts is exec'd through ``setpriv --pdeathsig KILL``
  (util-linux), so the kernel SIGKILLs it when the worker thread that started it dies -- a
  SIGKILL of the worker included (:func:`pdeathsig_prefix`).
* Cleaned up: what such a child started in turn (qemu under libguestfs, in its own process
  group but still in the child's session) can survive it.  Each child is recorded in
  ``WORK_DIR/.children/<pid>.json`` with the worker's pid and both start times; the next
  worker that starts on that work directory kills every process left in the session of an
  entry whose worker is gone (:meth:`ChildRegistry.reap_dead_workers`), removes the hidden
  ``.JOB_ID.*`` directories that job left in the work directory (libguestfs scratch, private
  output directories) unless a live worker runs that job again, then drops the entry.
  Start times (from /proc) guard against pids reused since.
"""

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
from typing import Optional

log = logging.getLogger(__name__)

_SETPRIV = shutil.which("setpriv")


def pdeathsig_prefix() -> list[str]:
    """argv prefix that makes a child die with the thread that started it (empty without setpriv)."""
    return [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


def _stat_fields(pid: int) -> Optional[list[bytes]]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()  # fields from 3 (state) on: index = field - 3


def start_time(pid: int) -> Optional[int]:
    """Start time of pid in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _session_members(sid: int, not_before: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if not fields or len(fields) <= 19 or fields[0] in (b"Z", b"X"):
            continue
        if int(fields[3]) == sid and int(fields[19]) >= not_before:  # field 6: session id
            out.append(int(name))
    return out


class ChildRegistry:
    """The record of the children of the workers sharing one work directory."""

    def __init__(self, directory: str, worker_id: str = "-"):
        self.directory = directory
        self.worker_id = worker_id
        self._me = (os.getpid(), start_time(os.getpid()))

    def _path(self, pid: int) -> str:
        return os.path.join(self.directory, f"{pid}.json")

    def add(self, pid: int, job_id: str) -> None:
        entry = {"pid": pid, "start": start_time(pid), "job_id": job_id, "worker_id": self.worker_id,
                 "worker_pid": self._me[0], "worker_start": self._me[1]}
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self._path(pid), flags, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(entry, fh)
        except OSError as exc:  # the child runs anyway; only the clean-up after a crash is lost
            log.warning("job %s: cannot record child pid %s in %s: %s", job_id, pid, self.directory, exc)

    def remove(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._path(pid))

    def reap_dead_workers(self) -> int:
        """Kill what is left of the children of workers that are gone; return how many processes."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        killed = 0
        dead_jobs, live_jobs = set(), set()
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as fh:
                    entry = json.load(fh)
                pid, start = int(entry["pid"]), entry.get("start")
                worker_pid, worker_start = int(entry["worker_pid"]), entry.get("worker_start")
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if worker_start is not None and start_time(worker_pid) == worker_start:
                live_jobs.add(entry.get("job_id"))
                continue  # that worker lives: its children are its own business
            dead_jobs.add(entry.get("job_id"))
            leader = start_time(pid)
            if start is not None and (leader is None or leader == start):  # else: pid reused since
                pids = _session_members(pid, start)
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                        killed += 1
                    except OSError:
                        pass
                if pids:
                    log.warning("job %s: killed %d process(es) left by dead worker %s (pid %s): %s",
                                entry.get("job_id"), len(pids), entry.get("worker_id"), worker_pid,
                                " ".join(map(str, pids)))
            with contextlib.suppress(OSError):
                os.unlink(path)
        for job_id in dead_jobs - live_jobs:
            self._remove_scratch(job_id)
        return killed

    def _remove_scratch(self, job_id) -> None:
        """Remove the hidden directories ``.JOB_ID.*`` a dead worker's job left in the work
        directory (libguestfs scratch, private output directories); never when a live worker
        on this host runs that job now (it was recovered and re-run meanwhile)."""
        if not isinstance(job_id, str) or not job_id or "/" in job_id:
            return
        work_dir = os.path.dirname(self.directory)
        prefix = f".{job_id}."
        try:
            names = [n for n in os.listdir(work_dir) if n.startswith(prefix)]
        except OSError:
            return
        for name in names:
            path = os.path.join(work_dir, name)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):  # a link is never followed
                    continue
                shutil.rmtree(path)
                log.warning("job %s: removed %s left by a dead worker", job_id, path)
            except OSError as exc:
                log.warning("job %s: cannot remove %s left by a dead worker: %s", job_id, path, exc)
