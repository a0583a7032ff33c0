"""``workers`` lists live and dead workers with their pool, running jobs and last sign of life,
and ``list``/``status`` tell a job whose worker was SIGKILLed from one that runs: on the files
at once (its lock is free), on Redis once its liveness key expired."""

import json

import pytest
from conftest import Dirs, cli, make_job, wait_for, write_job
from faultkit import Worker

pytestmark = pytest.mark.integration


def _sleep_job(job_id):
    return make_job(job_id, "test.sleep", {"seconds": 600})


def _workers(*where):
    proc = cli("workers", *where, "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {w["worker_id"]: w for w in json.loads(proc.stdout)}


def _listed(*where):
    proc = cli("list", *where, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {f[0]: f[1] for f in (line.split("\t") for line in proc.stdout.splitlines())}


def test_workers_and_list_on_files_after_a_sigkill(tmp_path):
    dirs = Dirs(tmp_path / "d")
    where = ["--jobs-dir", dirs.jobs, "--results-dir", dirs.results]
    write_job(dirs.jobs, _sleep_job("wk-files-0001"))
    w = Worker(dirs, "--worker-id", "wk-files-w1", "--pool", "vmimg", metrics=False)
    try:
        wait_for(lambda: dirs.running(), timeout=60, what="the job to start")
        live = _workers(*where)["wk-files-w1"]
        assert (live["alive"], live["pool"], live["running"]) == (True, "vmimg", ["wk-files-0001"])
        assert live["last_seen"].startswith("20")
        assert _listed(*where)["wk-files-0001"] == "running"
        w.proc.kill()
        w.proc.wait(30)
        gone = _workers(*where)["wk-files-w1"]
        assert (gone["alive"], gone["running"]) == (False, ["wk-files-0001"])
        assert _listed(*where)["wk-files-0001"] == "running (worker gone)"
        status = json.loads(cli("status", "wk-files-0001", *where, check=0).stdout)
        assert status["worker_gone"] is True and status["worker_id"] == "wk-files-w1"
        line = cli("workers", *where, check=0).stdout.strip()
        assert line.startswith("wk-files-w1\tvmimg\tgone\t20") and line.endswith("\twk-files-0001"), line
    finally:
        w.ensure_stopped()


def test_workers_and_list_on_redis_after_a_sigkill(tmp_path, redis_server, pool):
    where = ["--transport", "redis", "--redis-url", redis_server.url, "--pool", pool, "--lease-seconds", "2"]
    job = tmp_path / "job.json"
    job.write_text(json.dumps(_sleep_job("wk-redis-0001")))
    cli("submit", str(job), *where, check=0)
    dirs = Dirs(tmp_path / "d")
    w = Worker(dirs, "--worker-id", "wk-redis-w1", *where, metrics=False)
    try:
        wait_for(lambda: _listed(*where).get("wk-redis-0001") == "running", timeout=60,
                 what="the job to start")
        live = _workers(*where)["wk-redis-w1"]
        assert (live["alive"], live["pool"], live["running"]) == (True, pool, ["wk-redis-0001"])
        w.proc.kill()
        w.proc.wait(30)
        # the liveness key expires a lease (2 s) after its last refresh; no other worker takes it
        wait_for(lambda: _listed(*where)["wk-redis-0001"] == "running (worker gone)", timeout=30,
                 interval=0.5, what="the job to be shown as its worker's orphan")
        gone = _workers(*where)["wk-redis-w1"]
        assert (gone["alive"], gone["running"]) == (False, ["wk-redis-0001"])
        assert gone["last_seen"].startswith("20")
    finally:
        w.ensure_stopped()
