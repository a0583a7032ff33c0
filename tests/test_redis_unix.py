"""The Redis transport over a unix socket (``--redis-url unix:///PATH[?db=N]``): a real
redis-server listening on a socket only (no TCP port), the real CLI submitting and running a
job, the result read back from Redis."""

import json
import os
import stat

import pytest
from conftest import cli, make_job
from redisfixture import require_redis_py, start_redis, stored_result, submit_and_run_once

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def unix_server(tmp_path_factory):
    require_redis_py()
    server = start_redis(tmp_path_factory.mktemp("redis-unix"), unix=True)
    yield server
    server.stop()


@pytest.mark.parametrize("db", [None, 3])
def test_submit_and_run_once_over_a_unix_socket(unix_server, tmp_path, pool, db):
    assert stat.S_IMODE(os.stat(unix_server.socket).st_mode) == 0o700  # --unixsocketperm 700: ours alone
    url = unix_server.url + (f"?db={db}" if db is not None else "")
    job_id = f"unix-job-{db or 0}-001"
    submitted, ran = submit_and_run_once(tmp_path, pool, job_id, ["--redis-url", url])
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout == f"{job_id} pending\n", submitted.stdout
    assert ran.returncode == 0, ran.stderr
    assert f"at unix://{unix_server.socket}" in ran.stderr  # where it says it works
    result = stored_result(unix_server.client(db or 0), pool, job_id)
    assert result["status"] == "completed" and result["data"]["message"] == f"over {url}", result
    if db:
        other = unix_server.client()
        assert stored_result(other, pool, job_id) is None  # in db 3, not in db 0
    status = cli("status", job_id, "--transport", "redis", "--redis-url", url, "--pool", pool, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "completed", status.stderr


def test_submit_to_a_socket_nobody_listens_on_exits_2(tmp_path, pool):
    """No server on the socket: submit says so at once, one line, no traceback (a worker would
    wait for it instead: a fleet may start before its Redis)."""
    missing = tmp_path / "none.sock"
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("unix-missing-01")))
    p = cli("submit", str(job), "--transport", "redis", "--redis-url", f"unix://{missing}", "--pool", pool,
            timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "cannot queue it" in p.stderr and "No such file or directory" in p.stderr, p.stderr
