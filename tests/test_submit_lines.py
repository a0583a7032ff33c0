"""``submit`` prints one line per job, ``JOB_ID STATUS``, on every transport and over --api, and
the very same document submitted again exits 0 (a different document with that id is refused)."""

import json

import pytest
from apikit import Served
from conftest import Dirs, cli, make_job

pytestmark = pytest.mark.integration


def _files(tmp_path, doc, name):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def _check_three_submissions(tmp_path, where, job_id):
    """First submission, the same file again, another document under the same id."""
    doc = make_job(job_id)
    same = _files(tmp_path, doc, f"{job_id}-a.json")
    changed = dict(doc, payload={"type": "system.echo.v1", "data": {"x": 1}})
    other = _files(tmp_path, changed, f"{job_id}-b.json")
    first = cli("submit", same, *where, timeout=60)
    assert (first.returncode, first.stdout, first.stderr) == (0, f"{job_id} pending\n", "")
    again = cli("submit", same, *where, timeout=60)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout == f"{job_id} pending (already submitted)\n"
    clash = cli("submit", other, *where, timeout=60)
    assert clash.returncode == 1 and clash.stdout == "", clash
    lines = clash.stderr.strip().splitlines()
    assert len(lines) == 1 and f"job id {job_id} is already used by another job" in lines[0], lines


def test_submit_line_on_files(tmp_path):
    dirs = Dirs(tmp_path / "d")
    _check_three_submissions(tmp_path, ["--jobs-dir", dirs.jobs, "--results-dir", dirs.results],
                             "line-files-0001")


def test_submit_line_on_redis(tmp_path, redis_server, pool):
    where = ["--transport", "redis", "--redis-url", redis_server.url, "--pool", pool]
    _check_three_submissions(tmp_path, where, "line-redis-0001")


def test_submit_line_over_the_api(tmp_path):
    dirs = Dirs(tmp_path / "d")
    api = Served("api", dirs)
    try:
        doc = make_job("line-api-00001")
        same = _files(tmp_path, doc, "a.json")
        first = cli("submit", "--api", api.url, same, timeout=60)
        again = cli("submit", "--api", api.url, same, timeout=60)
    finally:
        api.stop()
    assert (first.returncode, first.stdout) == (0, "line-api-00001 pending\n")
    assert (again.returncode, again.stdout) == (0, "line-api-00001 pending (already submitted)\n")
