"""The fleet benchmark's harness still works (not a benchmark: a few jobs, one round).

bench/fleet.py starts its own redis-server and, per side, worker processes that must leave one
result in Redis per job (the harness checks the count and reports a side that did not as
failed); here every side (guestkit-worker --transport redis included) runs once on 40 jobs at
1 process x 2 threads."""


import pytest
from conftest import require, require_tool, run_bench

pytestmark = pytest.mark.integration


def _have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_fleet_harness_runs_every_side(tmp_path):
    require_tool("redis-server")
    for module in ("redis", "huey", "dramatiq", "rq", "celery"):
        require(_have(module), f"python package {module} (pip install -e .[bench])")
    doc = run_bench(tmp_path, "fleet.py", "--quick", "--jobs", "40", "--shapes", "1x2", timeout=240)
    rows = {line.split()[1]: line for line in doc["table"].splitlines() if line.startswith("1x2 ")}
    for side in ("floor", "worker", "dramatiq", "rq", "rq-fork", "huey", "celery"):
        assert side in rows, doc["table"]
        assert "failed" not in rows[side], doc["table"]
    assert "failed sides" not in doc["table"], doc["table"]
    assert doc["goals"], doc
