"""Shared fixtures: job documents, job directories, running the real CLI."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

#: session fixtures for disk images (debian_image, guestfs_env) live in tests/fixtures_disk.py,
#: a real redis-server (redis_server, redis_url, pool) in tests/redisfixture.py, a real Kafka
#: broker (kafka_broker, kafka_bootstrap) in tests/kafkafixture.py
pytest_plugins = ["fixtures_disk", "redisfixture", "kafkafixture"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join(ROOT, "tests", "plugin")
#: the upstream protocol's example jobs, kept unchanged as test inputs
UPSTREAM_JOBS = os.path.join(ROOT, "tests", "data", "upstream-worker-jobs")
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition, reason):
    """Skip outside CI, fail in CI (CI=true): a missing real dependency must not pass silently."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required dependency missing in CI: {reason}")
    pytest.skip(reason)


def require_tool(name):
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    return path


def make_job(job_id=None, operation="system.echo", data=None, payload_type=None, **top):
    doc = {
        "version": "1.0",
        "job_id": job_id or f"job-{uuid.uuid4().hex[:12]}",
        "created_at": "2026-11-01T00:00:00Z",
        "kind": "VMOperation",
        "operation": operation,
        "payload": {"type": payload_type or f"{operation}.v1", "data": {} if data is None else data},
    }
    doc.update(top)
    return doc


def write_job(jobs_dir, doc, name=None):
    os.makedirs(jobs_dir, exist_ok=True)
    name = name or f"{doc['job_id'] if isinstance(doc, dict) else uuid.uuid4().hex}.json"
    path = os.path.join(jobs_dir, name)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    os.rename(tmp, path)
    return path

def fake_probe_python(base):
    """A stand-in 'python' for the libguestfs probe in directory ``base``: it says guestfs is
    there and prints an almost empty inspection, for tests about the report rather than the guest."""
    script = os.path.join(base, "fake-python")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\nif [ \"$1\" = \"-c\" ]; then echo 1.48.6; exit 0; fi\n"
                 "echo '{\"operating_system\": {\"type\": \"linux\"}}'\n")
    os.chmod(script, 0o755)
    return script



class Dirs:
    def __init__(self, base):
        self.base = str(base)
        self.jobs = os.path.join(self.base, "jobs")
        self.results = os.path.join(self.base, "results")
        self.work = os.path.join(self.base, "work")
        for d in (self.jobs, self.results, self.work):
            os.makedirs(d, exist_ok=True)

    def args(self):
        return ["--jobs-dir", self.jobs, "--results-dir", self.results, "--work-dir", self.work]

    def result(self, job_id):
        with open(os.path.join(self.results, f"{job_id}-result.json")) as fh:
            return json.load(fh)

    def all_results(self):
        out = {}
        for name in os.listdir(self.results):
            if name.endswith("-result.json"):
                with open(os.path.join(self.results, name)) as fh:
                    doc = json.load(fh)
                out[doc["job_id"]] = doc
        return out

    def listing(self, sub):
        path = os.path.join(self.jobs, sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def running(self):
        """Names of job files some worker has started (NAME.json.running in .processing/*/)."""
        out = []
        for _root, _, files in os.walk(os.path.join(self.jobs, ".processing")):
            out += [f for f in files if f.endswith(".running")]
        return sorted(out)

    def reason(self, name):
        with open(os.path.join(self.jobs, "failed", name + ".reason.json")) as fh:
            return json.load(fh)


@pytest.fixture
def dirs(tmp_path):
    return Dirs(tmp_path)


#: pytest's base temporary directory: every test's files (tmp_path, session images) are
#: under it, so it is the --allow-path the test helpers give workers (set per session)
TEST_ROOT = None


@pytest.fixture(scope="session", autouse=True)
def _test_root(tmp_path_factory):
    global TEST_ROOT
    TEST_ROOT = str(tmp_path_factory.getbasetemp())
    return TEST_ROOT


def allowed_roots():
    """The allowed directories test helpers give workers and handlers: [TEST_ROOT]."""
    assert TEST_ROOT, "the _test_root session fixture has not run"
    return [TEST_ROOT]


def worker_env(**extra):
    """The environment for the real CLI: this checkout first on PYTHONPATH, and
    GUESTKIT_WORKER_ALLOW_PATH set to TEST_ROOT (the worker refuses every path without it);
    pass NAME=None to remove a variable."""
    env = dict(os.environ)
    inherited = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([PLUGIN_DIR, ROOT] + inherited)
    env.pop("GUESTKIT_WORKER_JOBS_DIR", None)
    env["GUESTKIT_WORKER_ALLOW_PATH"] = ":".join(allowed_roots())
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli(*args, env=None, timeout=120, check=None):
    """Run `python -m guestkit_worker ARGS` and return the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "guestkit_worker", *args], env=env or worker_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


def start_worker(dirs, *args, env=None):
    """Start a daemon worker (metrics off unless asked) and return the Popen."""
    return subprocess.Popen([sys.executable, "-m", "guestkit_worker", "run", *dirs.args(),
                             "--poll-interval", "0.1", *args],
                            env=env or worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_bench(tmp_path, script: str, *args: str, timeout: float) -> dict:
    """Run bench/SCRIPT ARGS --json in a fresh interpreter (this checkout first on PYTHONPATH,
    its scratch files under tmp_path), assert it exits 0, and return its JSON report."""
    out = tmp_path / f"{script}.json"
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env = dict(os.environ, GKW_BENCH_SCRATCH=str(tmp_path / "scratch"),
               PYTHONPATH=os.pathsep.join([ROOT] + inherited))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args, "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def wait_for(predicate, timeout=60, interval=0.05, what="condition"):
    """Poll predicate until true; bounded (never an open-ended sleep)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- the fast tier's guard ----------------------------------------------------------------
# A test that starts a process or listens on a socket carries the ``integration`` marker, so
# that -m "not integration" (the fast tier) leaves it out.  In a run that leaves integration
# tests out, such a call in any other test (its fixtures and threads included) raises and
# fails the test, whatever the test does with the exception: the marker cannot be forgotten.

class IntegrationOnly(RuntimeError):
    """Raised by a process start or a listening socket in a test without the integration marker."""


_GUARD = {"test": None, "seen": []}  # the guarded test running now; what it tried


def _refuse(what):
    test = _GUARD["test"]
    if test is None:  # outside a guarded test (collection, an integration test): allowed
        return
    message = (f"{test} {what}, but has no integration marker: mark this test integration "
               "(@pytest.mark.integration, or pytestmark = pytest.mark.integration in its module)")
    _GUARD["seen"].append(message)
    raise IntegrationOnly(message)


def _guarded(original, what):
    def guard(*args, **kwargs):
        _refuse(what)
        return original(*args, **kwargs)
    guard.__wrapped__ = original
    return guard


def _install_guard():
    """Wrap what starts a process (subprocess.Popen, os.fork, os.system) and what opens a
    listening socket (socket.socket.bind, .listen) with a check of the running test."""
    subprocess.Popen.__init__ = _guarded(subprocess.Popen.__init__, "starts a process")
    os.fork = _guarded(os.fork, "forks a process")
    os.system = _guarded(os.system, "starts a process (os.system)")
    socket.socket.bind = _guarded(socket.socket.bind, "binds a socket")
    socket.socket.listen = _guarded(socket.socket.listen, "listens on a socket")


def _leaves_out_integration(config):
    return "not integration" in (config.getoption("markexpr", "") or "")


def pytest_configure(config):
    if _leaves_out_integration(config):
        _install_guard()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    guarded = _leaves_out_integration(item.config) and item.get_closest_marker("integration") is None
    _GUARD["test"] = item.nodeid if guarded else None
    try:
        yield
    finally:
        _GUARD["test"] = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    seen = _GUARD["seen"]
    if seen:  # a failure of its own, even when the test caught IntegrationOnly or it hit a thread
        report = outcome.get_result()
        report.outcome, report.longrepr = "failed", seen[0]
        seen.clear()
