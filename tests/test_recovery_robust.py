"""Recovering the claims of a dead worker: no single claim can stop a worker from starting."""

import json
import os

import pytest
from conftest import cli, make_job

pytestmark = pytest.mark.integration


def _dead_claim(dirs, worker, name, raw, started=True):
    path = os.path.join(dirs.jobs, ".processing", worker)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name + (".running" if started else "")), "wb") as fh:
        fh.write(raw)


def test_nan_claim_of_a_dead_worker_is_rejected_and_startup_goes_on(dirs):
    # json.loads takes NaN; a recovery that re-serialised the claim with allow_nan=False would die,
    # and every next worker would take the claim over and die the same way
    doc = make_job("nan-claim-0001", audit={"score": float("nan")}, execution={"max_attempts": 3})
    _dead_claim(dirs, "dead-nan", "nan-claim-0001.json", json.dumps(doc).encode())
    _dead_claim(dirs, "dead-nan", "good-claim-001.json", json.dumps(make_job("good-claim-001")).encode(),
                started=False)
    proc = cli("--once", "--metrics-enabled", "false", *dirs.args())
    assert proc.returncode == 1, proc.stderr  # one job rejected
    assert "Traceback" not in proc.stderr
    assert dirs.result("good-claim-001")["status"] == "completed"
    reason = dirs.reason("nan-claim-0001.json")
    assert reason["error"]["code"] == "INVALID_JOB_FILE"
    assert reason["error"]["message"].startswith("audit.score: NaN is not a JSON number")
    assert not os.path.exists(os.path.join(dirs.jobs, ".processing", "dead-nan"))


def test_a_claim_whose_recovery_raises_goes_to_failed_and_the_rest_recover(dirs):
    # a started claim whose stored result is not a JSON object: recovery's look at the earlier
    # result raised (once AttributeError out of start-up; now the store's ValueError)
    _dead_claim(dirs, "dead-odd", "odd-result-001.json", json.dumps(make_job("odd-result-001")).encode())
    with open(os.path.join(dirs.results, "odd-result-001-result.json"), "w") as fh:
        fh.write("[1, 2]\n")
    _dead_claim(dirs, "dead-odd", "zz-after-odd1.json", json.dumps(make_job("zz-after-odd1")).encode(),
                started=False)
    proc = cli("--once", "--metrics-enabled", "false", *dirs.args())
    assert proc.returncode == 0, proc.stderr
    reason = dirs.reason("odd-result-001.json")
    assert reason["status"] == "failed" and reason["error"]["code"] == "RECOVERY_FAILED"
    assert "not a JSON object" in reason["error"]["message"] and "dead-odd" in reason["error"]["message"]
    assert dirs.result("zz-after-odd1")["status"] == "completed"
    with open(os.path.join(dirs.results, "odd-result-001-result.json")) as fh:
        assert fh.read() == "[1, 2]\n"  # not touched


def test_a_file_worker_counts_the_claims_it_takes_over(dirs):
    """The file transport reports each job file it takes over from a dead worker to the worker's
    metrics (guestkit_worker_jobs_reclaimed_total), as the Redis transport does."""
    from prometheus_client import CollectorRegistry

    from guestkit_worker.runtime.worker import Worker, WorkerConfig
    for i in range(3):  # the started one runs again as attempt 2
        doc = make_job(f"count-claim-{i}", execution={"max_attempts": 2})
        _dead_claim(dirs, "dead-count", f"count-claim-{i}.json", json.dumps(doc).encode(), started=i == 0)
    cfg = WorkerConfig(jobs_dir=dirs.jobs, results_dir=dirs.results, work_dir=dirs.work, worker_id="count-w",
                       poll_interval=0.05, once=True, durable=False)
    worker = Worker(cfg, registry=CollectorRegistry())
    worker.open()
    assert worker.run() == 0
    value = {s.name: s.value for m in worker.metrics.registry.collect() for s in m.samples}
    assert value["guestkit_worker_jobs_reclaimed_total"] == 3
    assert sorted(dirs.all_results()) == [f"count-claim-{i}" for i in range(3)]
    assert dirs.result("count-claim-0")["execution_summary"]["attempt"] == 2
