"""Small units: the job state machine, atomic writes, the process-tree killer, metrics children."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import wait_for
from metricskit import parse, value
from prometheus_client import CollectorRegistry, generate_latest

from guestkit_worker.job.errors import InvalidTransition
from guestkit_worker.job.states import JobState, check_transition
from guestkit_worker.metrics.families import NullMetrics, WorkerMetrics
from guestkit_worker.system import atomic
from guestkit_worker.system.procs import descendants, kill_tree


def _status_lists_outside_job_states():
    """file:line of every tuple, list or set literal of four or more job statuses in the package,
    outside job/states.py."""
    import ast
    import pathlib

    import guestkit_worker
    from guestkit_worker.job.states import JOB_STATUSES, OUTCOME_STATUSES
    names = set(JOB_STATUSES) | set(OUTCOME_STATUSES)
    package = pathlib.Path(guestkit_worker.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "job" / "states.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if len(values & names) >= 4:
                    found.append(f"{path.relative_to(package)}:{node.lineno}")
    return found


def test_job_statuses_are_defined_once_in_job_states():
    """The API, the command line, the transports and the metrics take their status lists from
    job/states.py; the Redis scripts' table of final statuses says the same."""
    import re

    from guestkit_worker.job import states
    from guestkit_worker.transports.redis import scripts
    assert _status_lists_outside_job_states() == []
    assert states.JOB_STATUSES == ("pending", "running", "completed", "failed", "timeout", "cancelled",
                                   "rejected")
    assert set(states.RESULT_STATUSES) | {"rejected"} == states.FINAL_STATUSES
    assert set(states.JOB_STATUSES) > states.FINAL_STATUSES
    assert states.OUTCOME_STATUSES == states.RESULT_STATUSES + ("rejected", "duplicate")
    assert {s.value for s in JobState} == set(states.JOB_STATUSES) - {"rejected"} | {"assigned"}
    with open(scripts.__file__, encoding="utf-8") as fh:
        lua = re.search(r"local FINAL = \{([^}]*)\}", fh.read())
    assert {k.split("=")[0].strip() for k in lua.group(1).split(",")} == states.FINAL_STATUSES


def test_state_machine_happy_paths():
    s = JobState.PENDING
    for nxt in (JobState.ASSIGNED, JobState.RUNNING, JobState.TIMEOUT):
        s = check_transition(s, nxt)
    assert s is JobState.TIMEOUT
    assert check_transition(JobState.ASSIGNED, JobState.FAILED) is JobState.FAILED  # rejected


@pytest.mark.parametrize("old, new", [
    (JobState.PENDING, JobState.RUNNING),
    (JobState.COMPLETED, JobState.RUNNING),
    (JobState.TIMEOUT, JobState.COMPLETED),
    (JobState.RUNNING, JobState.ASSIGNED),
])
def test_invalid_transitions_raise(old, new):
    with pytest.raises(InvalidTransition) as info:
        check_transition(old, new)
    assert str(info.value) == f"job state cannot go from {old.value} to {new.value}"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "r.json"
    os.mkdir(tmp_path / "full")
    with pytest.raises(IsADirectoryError):  # the rename fails: the temp file must go too
        atomic.write_bytes(str(tmp_path / "full"), b"x")
    assert os.listdir(tmp_path) == ["full"]
    atomic.write_bytes(str(target), b"first\n")
    assert target.read_text() == "first\n"
    with pytest.raises(FileExistsError):
        atomic.write_bytes(str(target), b"other", overwrite=False)
    assert target.read_text() == "first\n" and sorted(os.listdir(tmp_path)) == ["full", "r.json"]


@pytest.mark.integration
def test_kill_tree_reaches_children_in_other_process_groups():
    # a child that starts a grandchild in its own session (as qemu under libguestfs), both ignoring SIGTERM
    code = ("import os, signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); time.sleep(600)'], start_new_session=True)\n"
            "print(p.pid, flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    grandchild = int(proc.stdout.readline())
    assert grandchild in descendants(proc.pid)
    kill_tree(proc, grace=0.5)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: not _alive(grandchild), timeout=10, what="grandchild gone")


def _alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_metrics_children_cached_and_unknown_bounded():
    reg = CollectorRegistry()
    m = WorkerMetrics(operations=["system.echo"], handlers=["system.echo"], worker_id="u", pool="p",
                      version="0", max_concurrent=2, registry=reg)
    m.job_finished("system.echo", "completed", 0.5)
    m.job_finished(m.label_operation("made.up"), "rejected", 0.1)
    m.handler_started(queue_wait=3.0)
    m.handler_returned("system.echo", "success", 0.5)
    m.checksum("failure")
    m.disk_io(read_bytes=10, write_bytes=5)
    s = parse(generate_latest(reg).decode())
    assert value(s, "guestkit_worker_jobs_total", operation="system.echo", status="completed") == 1
    assert value(s, "guestkit_worker_jobs_total", operation="unknown", status="rejected") == 1
    assert value(s, "guestkit_worker_jobs_duration_seconds_bucket", operation="system.echo",
                 status="completed", le="1.0") == 1
    assert value(s, "guestkit_worker_queue_wait_seconds_sum") == 3.0
    assert value(s, "guestkit_worker_active_jobs") == 0
    assert value(s, "guestkit_checksum_verifications_total", status="failure") == 1
    assert (value(s, "guestkit_worker_disk_read_bytes_total"),
            value(s, "guestkit_worker_disk_write_bytes_total")) == (10, 5)
    assert m.label_operation("made.up") == "unknown"


def test_null_metrics_implement_every_call_and_refuse_a_misspelt_one():
    """Metrics on or off, the worker makes the same calls: NullMetrics has exactly the public
    methods of WorkerMetrics (the interface's, which include the transport's observer calls),
    and a misspelt call fails at once instead of recording nothing."""
    from guestkit_worker.metrics.families import WorkerMetricsInterface
    from guestkit_worker.transports.base import TransportObserver

    def public(cls):
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(NullMetrics) == public(WorkerMetrics) == public(WorkerMetricsInterface)
    assert public(TransportObserver) <= public(WorkerMetricsInterface)
    assert "job_finished" in public(NullMetrics) and "set_queue_depth" not in public(NullMetrics)
    null = NullMetrics()
    assert null.job_finished("system.echo", "completed", 0.5) is None
    assert null.label_operation("made.up") == "made.up"
    with pytest.raises(AttributeError):
        null.job_finishd("system.echo", "completed", 0.5)
    m = WorkerMetrics(operations=["system.echo"], handlers=["system.echo"], worker_id="u", pool="p",
                      version="0", max_concurrent=2, registry=CollectorRegistry())
    with pytest.raises(AttributeError):
        m.job_finishd("system.echo", "completed", 0.5)


def test_worker_metrics_are_a_transport_observer():
    """The worker hands its metrics to the transport as its TransportObserver: every event a
    transport reports lands in a metric (the transport imports nothing of metrics/)."""
    from guestkit_worker.transports.base import TransportObserver
    reg = CollectorRegistry()
    m = WorkerMetrics(operations=["system.echo"], handlers=["system.echo"], worker_id="u", pool="p",
                      version="0", max_concurrent=2, registry=reg)
    events = {n for n in dir(TransportObserver) if not n.startswith("_")}
    assert events == {"jobs_reclaimed", "lease_lost", "dead_lettered", "set_queue_oldest_age",
                      "transport_error"}
    m.jobs_reclaimed(2)
    m.lease_lost()
    m.dead_lettered("max_deliveries")
    m.set_queue_oldest_age(7.5)
    m.transport_error("fetch")
    s = parse(generate_latest(reg).decode())
    assert value(s, "guestkit_worker_jobs_reclaimed_total") == 2
    assert value(s, "guestkit_worker_leases_lost_total") == 1
    assert value(s, "guestkit_worker_dead_lettered_total", reason="max_deliveries") == 1
    assert value(s, "guestkit_worker_queue_oldest_waiting_seconds") == 7.5
    assert value(s, "guestkit_worker_transport_errors_total", operation="fetch") == 1
    quiet = TransportObserver()  # the no-op default answers the same calls
    assert (quiet.jobs_reclaimed(2), quiet.lease_lost(), quiet.dead_lettered("max_deliveries"),
            quiet.set_queue_oldest_age(7.5), quiet.transport_error("fetch")) == (None,) * 5


def test_the_defaults_of_options_config_transport_and_servers_are_one_table():
    """``--help``, a WorkerConfig built in a program, the Redis transport and the HTTP servers
    default alike: each reads guestkit_worker/settings/defaults.py."""
    import inspect

    from guestkit_worker.api.jobs import JobsApi
    from guestkit_worker.api.service import ApiOptions
    from guestkit_worker.cli.options import RUN_OPTIONS
    from guestkit_worker.http.server import serve_wsgi
    from guestkit_worker.runtime.config import WorkerConfig
    from guestkit_worker.settings import defaults
    from guestkit_worker.transports.redis.transport import RedisTransport

    option = {dest: default for _, dest, _, default, *_ in RUN_OPTIONS}
    cfg = WorkerConfig()
    config_of_option = {"max_job_size": "max_job_bytes"}
    for dest in ("jobs_dir", "results_dir", "work_dir", "pool", "transport", "max_concurrent",
                 "poll_interval", "shutdown_timeout", "max_job_size", "min_free_space", "redis_url",
                 "lease_seconds",
                 "max_deliveries", "result_ttl"):
        assert getattr(cfg, config_of_option.get(dest, dest)) == option[dest], dest

    def default(func, name):
        return inspect.signature(func).parameters[name].default

    for name in ("lease_seconds", "max_deliveries", "result_ttl"):
        assert default(RedisTransport.__init__, name) == option[name], name
    assert default(RedisTransport.__init__, "max_job_bytes") == option["max_job_size"]
    assert default(serve_wsgi, "max_connections") == option["http_max_connections"]
    assert ApiOptions(addr="127.0.0.1:0").max_connections == option["api_max_connections"]
    assert ApiOptions(addr="127.0.0.1:0").max_waits == option["api_max_waits"]
    assert default(JobsApi.__init__, "max_waits") == option["api_max_waits"]
    assert option["jobs_dir"] == defaults.DEFAULT_JOBS_DIR
    assert option["redis_url"] == defaults.DEFAULT_REDIS_URL


def test_no_module_but_defaults_spells_a_default():
    """The default directories, Redis URL and metrics address are written once, in
    guestkit_worker/settings/defaults.py (before: "./jobs" and "./results" also in cli/options.py,
    cli/jobs.py and cli/prune.py, the Redis URL in cli/options.py and runtime/config.py)."""
    import ast
    import pathlib

    import guestkit_worker
    from guestkit_worker.settings import defaults
    values = {defaults.DEFAULT_JOBS_DIR, defaults.DEFAULT_RESULTS_DIR, defaults.DEFAULT_WORK_DIR,
              defaults.DEFAULT_REDIS_URL, defaults.DEFAULT_METRICS_ADDR}
    package = pathlib.Path(guestkit_worker.__file__).parent
    found = [f"{path.relative_to(package)}:{node.lineno} {node.value}"
             for path in sorted(package.rglob("*.py")) if path != package / "settings" / "defaults.py"
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in values]
    assert found == []
