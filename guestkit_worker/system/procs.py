"""Child processes that can really be stopped: own process group, whole tree killed.

Every child a handler starts goes into a new session (so a new process group).  Stopping it
signals that group *and* every descendant found through /proc, because some engines (qemu
started by libguestfs) move into process groups of their own.  SIGTERM first, SIGKILL after
a grace period; ESRCH (already gone) is not an error.
"""

import errno
import logging
import os
import signal
import subprocess
import threading
import time

from .orphans import pdeathsig_prefix

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 3.0


def _children_map():
    """{ppid: [pid, ...]} for every process visible in /proc."""
    kids = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return kids
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def descendants(pid):
    """All live descendants of pid (children, grandchildren, ...)."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _signal(pid, sig, group=False):
    try:
        (os.killpg if group else os.kill)(pid, sig)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise
        return False


def kill_tree(proc, grace=KILL_GRACE_SECONDS, job_id="-"):
    """Terminate proc's process group and all its descendants; SIGKILL what survives grace."""
    pids = [proc.pid] + descendants(proc.pid)
    log.info("job %s: stopping child pid %s (%d processes)", job_id, proc.pid, len(pids))
    _signal(proc.pid, signal.SIGTERM, group=True)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if proc.poll() is not None and not any(alive(p) for p in pids[1:]):
            break
        time.sleep(0.05)
    pids += [p for p in descendants(proc.pid) if p not in pids]
    _signal(proc.pid, signal.SIGKILL, group=True)
    for pid in pids:
        if alive(pid):
            log.warning("job %s: pid %s ignored SIGTERM, sending SIGKILL", job_id, pid)
            _signal(pid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.error("job %s: child pid %s did not exit after SIGKILL", job_id, proc.pid)


def kill_tree_now(pid):
    """SIGKILL pid's process group and every descendant at once, no grace period (a second
    signal to the worker).  The children are reaped by their own waiters."""
    pids = [pid] + descendants(pid)
    _signal(pid, signal.SIGKILL, group=True)
    for p in pids:
        _signal(p, signal.SIGKILL)


def alive(pid):
    """Whether pid runs (a zombie or a dead process does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


class ChildProcess:
    """A running child in its own session; output collected by reader threads."""

    def __init__(self, argv, *, env=None, cwd=None, on_stdout_line=None, on_stderr_line=None,
                 job_id="-"):
        self.argv = list(argv)
        self.job_id = job_id
        # exec'd through setpriv --pdeathsig KILL: the child dies with the thread that started it,
        # even when the worker is SIGKILLed (see guestkit_worker.system.orphans)
        self.proc = subprocess.Popen(
            pdeathsig_prefix() + self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True, close_fds=True)
        self.stdout_chunks, self.stderr_chunks = [], []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_chunks, on_stdout_line),
                             name=f"out-{self.proc.pid}", daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_chunks, on_stderr_line),
                             name=f"err-{self.proc.pid}", daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _pump(stream, chunks, on_line):
        # qemu-img -p ends progress lines with '\r': split on both
        buf = b""
        while True:
            data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not data:
                break
            chunks.append(data)
            if on_line:
                buf += data.replace(b"\r", b"\n")
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        try:
                            on_line(line.decode("utf-8", "replace"))
                        except Exception:  # a progress parser must not break output capture
                            log.exception("line callback failed")
        stream.close()

    @property
    def pid(self):
        return self.proc.pid

    def wait(self, cancel_event, poll=0.1):
        """Wait for exit; return None if cancel_event was set first (child then killed)."""
        while True:
            try:
                self.proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                if cancel_event.is_set():
                    self.kill()
                    return None
        for t in self._readers:
            t.join(timeout=5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None or descendants(self.proc.pid):
            kill_tree(self.proc, job_id=self.job_id)
        for t in self._readers:
            t.join(timeout=5)

    @property
    def stdout(self):
        return b"".join(self.stdout_chunks)

    @property
    def stderr(self):
        return b"".join(self.stderr_chunks)


class StreamedChild:
    """A child in its own session whose stdout the caller reads as a stream (output larger than
    memory, parsed as it comes) while stderr's last ``STDERR_KEEP`` bytes are kept by a reader
    thread.  :meth:`stop_on` kills its whole tree when a job's cancel event is set (cancel,
    timeout, shutdown) or a time limit passes, as :class:`ChildProcess` children are."""

    STDERR_KEEP = 4096

    def __init__(self, argv, *, job_id="-"):
        self.argv, self.job_id = list(argv), job_id
        self.proc = subprocess.Popen(
            pdeathsig_prefix() + self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        self.stdout = self.proc.stdout
        self._stderr = b""
        self._err_reader = threading.Thread(target=self._drain, name=f"err-{self.proc.pid}", daemon=True)
        self._err_reader.start()
        self.stopped = threading.Event()  # set when stop_on killed the child

    def _drain(self):
        for chunk in iter(lambda: self.proc.stderr.read(65536), b""):
            self._stderr = (self._stderr + chunk)[-self.STDERR_KEEP:]
        self.proc.stderr.close()

    def stop_on(self, event, seconds):
        """Watch in a thread: kill the tree once ``event`` (a threading.Event or None) is set
        or ``seconds`` have passed, whichever comes first while the child runs."""
        end = time.monotonic() + seconds

        waiter = event if event is not None else threading.Event()

        def watch():
            while self.proc.poll() is None:
                left = end - time.monotonic()
                if left <= 0 or waiter.wait(min(0.1, left)):
                    self.stopped.set()
                    kill_tree(self.proc, job_id=self.job_id)
                    return

        threading.Thread(target=watch, name=f"watch-{self.proc.pid}", daemon=True).start()

    def finish(self):
        """Close stdout and wait for the exit (the tree killed if it does not end within the
        grace period); (returncode, stderr's tail)."""
        self.stdout.close()
        try:
            self.proc.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc, job_id=self.job_id)
        self._err_reader.join(timeout=5)
        return self.proc.returncode, self._stderr

    def kill(self):
        kill_tree(self.proc, job_id=self.job_id)
