"""The vulnerability benchmark's harness still works (not a benchmark: 2,000 generated records,
one round): it generates a database, indexes and scans it in a fresh interpreter and reports
its three goals."""


import pytest
from conftest import run_bench

pytestmark = pytest.mark.integration


def test_vulns_harness_generates_indexes_and_scans(tmp_path):
    doc = run_bench(tmp_path, "bench_vulns.py", "--records", "2000", "--rounds", "1",
                    "--inspect-seconds", "20", timeout=240)
    assert [g["goal"] for g in doc["goals"]] == ["vuln db indexing", "vuln db memory", "vuln matching"]
    assert "OSV database: 2000 records, 0 skipped" in doc["table"]
    assert "1500 installed packages" in doc["table"]
