"""The file transport takes waiting jobs by ``execution.priority`` (10 first, 5 when none is
given), in file-name order within a priority."""

import pytest
from conftest import cli, make_job, write_job

pytestmark = pytest.mark.integration


def test_higher_priority_jobs_are_claimed_first(dirs):
    jobs = {"a-low": 1, "b-default": None, "c-high": 10, "d-mid": 7, "e-default": None}
    for name, priority in jobs.items():
        doc = make_job(f"prio-{name}-01", execution={"priority": priority} if priority else {})
        if priority is None:
            doc.pop("execution")
        write_job(dirs.jobs, doc, name=f"{name}.json")
    proc = cli("--once", "--max-concurrent", "1", *dirs.args(), "--metrics-enabled", "false", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = dirs.all_results()
    order = sorted(results, key=lambda j: results[j]["execution_summary"]["started_at"])
    assert order == ["prio-c-high-01", "prio-d-mid-01", "prio-b-default-01", "prio-e-default-01",
                     "prio-a-low-01"], order
