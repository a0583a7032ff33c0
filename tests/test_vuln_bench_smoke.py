"""The vulnerability benchmark's harness still works (not a benchmark: 2,000 generated records,
one round): it generates a database, indexes and scans it in a fresh interpreter and reports
its three goals."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration


def test_vulns_harness_generates_indexes_and_scans(tmp_path):
    out = tmp_path / "vulns.json"
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    env = dict(os.environ, GKW_BENCH_SCRATCH=str(tmp_path / "scratch"),
               PYTHONPATH=os.pathsep.join([ROOT] + inherited))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_vulns.py"), "--records", "2000",
                           "--rounds", "1", "--inspect-seconds", "20", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [g["goal"] for g in doc["goals"]] == ["vuln db indexing", "vuln db memory", "vuln matching"]
    assert "OSV database: 2000 records, 0 skipped" in doc["table"]
    assert "1500 installed packages" in doc["table"]
