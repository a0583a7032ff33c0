"""The fleet benchmark's harness still works (not a benchmark: a few jobs, one round).

bench/fleet.py starts its own redis-server and, per side, worker processes that must leave one
result in Redis per job (the harness checks the count and reports a side that did not as
failed); here every side (guestkit-worker --transport redis included) runs once on 40 jobs at
1 process x 2 threads."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, require, require_tool

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
    out = tmp_path / "fleet.json"
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env = dict(os.environ, GKW_BENCH_SCRATCH=str(tmp_path / "scratch"),
               PYTHONPATH=os.pathsep.join([ROOT] + inherited))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "fleet.py"), "--quick", "--jobs", "40",
                           "--shapes", "1x2", "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {line.split()[1]: line for line in doc["table"].splitlines() if line.startswith("1x2 ")}
    for side in ("floor", "worker", "dramatiq", "rq", "rq-fork", "huey", "celery"):
        assert side in rows, doc["table"]
        assert "failed" not in rows[side], doc["table"]
    assert "failed sides" not in doc["table"], doc["table"]
    assert doc["goals"], doc
