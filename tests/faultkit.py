"""Helpers for the fault, hostile-input and soak tests (tests/test_faults.py, test_hostile.py,
test_soak.py).

Two halves:

* worker-side: the ``fault.journal`` handler (every run appends ``JOB_ID ATTEMPT PID`` to a
  journal file before it does anything else, so a test can count how often each job ran) and
  :func:`install_write_faults`, which makes writes into a directory fail with ENOSPC while a
  flag file exists.  Both are imported inside the worker process, so this module imports
  nothing from the tests at import time;
* test-side: :class:`Worker` (a real ``python -m guestkit_worker`` process whose stderr goes to a
  file, never a pipe that could fill up), metric and /proc helpers, and an inotify watch that
  proves a file was never opened.
"""

import ctypes
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

TESTS = os.path.dirname(os.path.abspath(__file__))

# -- worker side: the journal handler -----------------------------------------------------

try:
    from guestkit_worker.handlers.base import Handler, HandlerResult
except ImportError:  # pragma: no cover - the package is installed for the tests
    Handler, HandlerResult = object, None


class JournalHandler(Handler):
    """fault.journal: append 'JOB_ID ATTEMPT PID' to payload.journal, report progress, then
    wait payload.seconds (honouring cancellation) and return the attempt."""

    name = "fault.journal"
    operations = ("fault.journal",)
    payload_types = ("fault.journal.v1",)

    def execute(self, context, data):
        line = f"{context.job_id} {context.job.attempt} {os.getpid()}\n".encode()
        fd = os.open(data["journal"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)  # one small O_APPEND write: whole lines even under SIGKILL
        finally:
            os.close(fd)
        if data.get("progress"):
            context.progress("execution", 50, "journal written")
        seconds = float(data.get("seconds", 0))
        if seconds and context.cancel_event.wait(seconds):
            context.check_cancelled()
        return HandlerResult(data={"attempt": context.job.attempt, "tag": data.get("tag")})


PLUGIN_METADATA = "Metadata-Version: 2.1\nName: gkw-faultkit\nVersion: 0.1\n"
PLUGIN_ENTRY_POINTS = "[guestkit_worker.handlers]\njournal = faultkit:JournalHandler\n"


# -- worker side: injected write errors ---------------------------------------------------

def install_write_faults():
    """Make os.write into hidden temp files ('.NAME.tmp') under $GKW_FAULT_DIR fail while the
    file $GKW_FAULT_FLAG exists: the first write of a file really writes half of its bytes
    (a half-written temp file, as on a real full disk), the next one raises ENOSPC.

    The worker writes results through atomic.write_bytes, which calls os.write, so this is
    the disk filling up under it; nothing in the worker knows about the shim.
    """
    watched = os.path.realpath(os.environ["GKW_FAULT_DIR"]) + os.sep
    flag = os.environ["GKW_FAULT_FLAG"]
    real_write = os.write
    half_written = set()

    def write(fd, data):
        if os.path.exists(flag):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            base = os.path.basename(target)
            if target.startswith(watched) and base.startswith(".") and base.endswith(".tmp"):
                if fd not in half_written and len(data) > 1:
                    half_written.add(fd)
                    return real_write(fd, bytes(memoryview(data)[:len(data) // 2]))
                half_written.discard(fd)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    os.write = write


SHIM_MAIN = ("import sys, faultkit; faultkit.install_write_faults(); "
             "from guestkit_worker.cli.main import main; sys.exit(main(sys.argv[1:]))")


# -- test side ----------------------------------------------------------------------------

def plugin_env(base, **extra):
    """worker_env() plus the fault.journal handler (a dist-info written under base)."""
    from conftest import worker_env
    plugdir = os.path.join(str(base), "faultplugin")
    info = os.path.join(plugdir, "gkw_faultkit-0.1.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as fh:
        fh.write(PLUGIN_METADATA)
    with open(os.path.join(info, "entry_points.txt"), "w") as fh:
        fh.write(PLUGIN_ENTRY_POINTS)
    env = worker_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join([plugdir, TESTS, env["PYTHONPATH"]])
    return env


def journal_job(job_id, journal, seconds=0.0, **top):
    from conftest import make_job
    data = {"journal": str(journal), "seconds": seconds}
    data.update(top.pop("data", {}))
    return make_job(job_id, "fault.journal", data, **top)


def read_runs(path) -> list:
    """[(job_id, attempt, pid), ...] of a fault.journal journal, in the order the runs started."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [(j, int(a), int(p)) for j, a, p in (line.split() for line in fh)]


def read_journal(path):
    """{job_id: [attempt, ...]} in the order the runs started."""
    runs = {}
    for job_id, attempt, _pid in read_runs(path):
        runs.setdefault(job_id, []).append(attempt)
    return runs
    with open(path) as fh:
        for line in fh:
            job_id, attempt, _pid = line.split()
            runs.setdefault(job_id, []).append(int(attempt))
    return runs


def cap_drop_prefix():
    """argv prefix that runs a command as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH,
    so file modes apply to it as to any user (tests run as root, which ignores them)."""
    if os.geteuid() != 0:
        return []
    from conftest import require_tool
    return [require_tool("setpriv"), "--bounding-set", "-dac_override,-dac_read_search"]


class Worker:
    """A real worker process: `python -m guestkit_worker run DIRS ARGS`, stderr to a file."""

    def __init__(self, dirs, *args, env=None, prefix=(), shim=False, log_name=None, metrics=True,
                 umask=None):
        from conftest import worker_env
        self.dirs = dirs
        log_name = log_name or f"worker-{time.monotonic_ns()}.log"
        self.log_path = os.path.join(dirs.base, log_name)
        main = ["-c", SHIM_MAIN] if shim else ["-m", "guestkit_worker"]
        extra = ["--metrics-addr", "127.0.0.1:0"] if metrics else ["--metrics-enabled", "false"]
        self.argv = [*prefix, sys.executable, *main, "run", *dirs.args(), "--poll-interval", "0.1",
                     *extra, *args]
        with open(self.log_path, "w") as log:  # the worker writes through its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, env=env or worker_env(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
        self.pid = self.proc.pid
        try:
            self.url = self._find_url(60) if metrics else None
        except BaseException:
            self.ensure_stopped()  # never leave a worker running behind a failed start
            raise

    def log(self):
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def _find_url(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(r"serving /metrics and /health on (\S+)", self.log())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"worker did not start serving metrics:\n{self.log()[-3000:]}")

    def wait_running(self, timeout=60):
        """Wait for the log line run() writes once its job threads and watchdog have started
        (the metrics URL is logged earlier, before the worker opens its directories)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if re.search(r"serving .* at once", self.log()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"worker did not start running:\n{self.log()[-3000:]}")

    def samples(self):
        from metricskit import parse, scrape
        return parse(scrape(self.url))

    def counted(self, n, timeout=30):
        """Samples once guestkit_worker_jobs_total adds up to at least n (an outcome is
        counted just after its job file is archived, so a test that saw the file waits here)."""
        from conftest import wait_for
        return wait_for(lambda: (lambda s: s if total(s, "guestkit_worker_jobs_total") >= n else None)(
            self.samples()), timeout=timeout, what=f"{n} outcomes counted")

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout=60):
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def ensure_stopped(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    # /proc views of the worker process
    def status(self, key):
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def threads(self):
        return self.status("Threads")

    def rss_kib(self):
        return self.status("VmRSS")

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def total(samples, name, **labels):
    """Sum of every sample called name whose labels include the given ones."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def archived(dirs, sub):
    """Job file names in jobs/<sub>/ (no reason files)."""
    return [n for n in dirs.listing(sub) if not n.endswith(".reason.json")]


def waiting(dirs):
    return sorted(n for n in os.listdir(dirs.jobs) if n.endswith(".json") and not n.startswith("."))


def processing(dirs):
    """Every file left in jobs/.processing/*/ (claims)."""
    out = []
    root = os.path.join(dirs.jobs, ".processing")
    for sub in os.listdir(root) if os.path.isdir(root) else ():
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            out += [f"{sub}/{n}" for n in os.listdir(path)]
    return sorted(out)


def temp_files(directory):
    """Hidden temp files (atomic-write leftovers) anywhere under directory."""
    out = []
    for root, _, files in os.walk(directory):
        out += [os.path.join(root, f) for f in files if f.startswith(".") and f.endswith(".tmp")]
    return out


def load_results(dirs):
    """{job_id: result} and a list of result files that are not valid JSON."""
    out, broken = {}, []
    for name in os.listdir(dirs.results):
        if name.endswith("-result.json"):
            try:
                with open(os.path.join(dirs.results, name)) as fh:
                    doc = json.load(fh)
            except ValueError:
                broken.append(name)
                continue
            out[doc["job_id"]] = doc
    return out, broken


# -- inotify: prove a file is never opened ------------------------------------------------

IN_ACCESS, IN_OPEN, IN_NONBLOCK, IN_CLOEXEC = 0x1, 0x20, 0o4000, 0o2000000


class OpenWatch:
    """inotify watch for IN_OPEN/IN_ACCESS on paths; .events() drains what happened since."""

    def __init__(self, *paths):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.watches = {}
        for p in paths:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(p), IN_OPEN | IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {p}")
            self.watches[wd] = p

    def events(self):
        """[(path, mask)] of the events queued so far."""
        out = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            off = 0
            while off < len(buf):
                wd, mask, _cookie, length = __import__("struct").unpack_from("iIII", buf, off)
                out.append((self.watches.get(wd), mask))
                off += 16 + length

    def close(self):
        os.close(self.fd)
