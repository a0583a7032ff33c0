"""Several workers on one jobs directory: idempotency keys reserved before a handler runs, and
cancel requests for running jobs."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import cli, make_job, start_worker, wait_for, worker_env, write_job

from guestkit_worker.job.outcomes import cancelled_before_start
from guestkit_worker.transports.files import FileTransport

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_sharing_a_jobs_dir_never_run_one_idempotency_key_twice(dirs, workers):
    """Eight jobs with one key, taken at once by several one-shot workers: exactly one handler
    run; every other job is a duplicate of it."""
    for i in range(8):
        write_job(dirs.jobs, make_job(f"samekey-{i:04d}", "test.sleep", {"seconds": 0.3},
                                      execution={"idempotency_key": "one-key"}))
    procs = [subprocess.Popen([sys.executable, "-m", "guestkit_worker", "--once", *dirs.args(),
                               "--max-concurrent", "4", "--worker-id", f"key-w{n}",
                               "--metrics-enabled", "false"],
                              env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(workers)]
    ran = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ran += re.findall(r"job (samekey-[0-9]{4}): running", err)
    results = dirs.all_results()
    assert sorted(results) == [f"samekey-{i:04d}" for i in range(8)]
    assert len(ran) == 1, ran
    [original] = ran
    for job_id, r in results.items():
        assert r["status"] == "completed"
        if job_id != original:
            assert r["duplicate_of"]["job_id"] == original and r["data"] == results[original]["data"]
    assert len(dirs.listing("done")) == 8 and dirs.listing("failed") == []


def test_a_running_job_cancelled_on_request_is_archived_not_requeued(dirs):
    write_job(dirs.jobs, make_job("cancel-me-0001", "test.sleep", {"seconds": 60}))
    proc = start_worker(dirs, "--metrics-enabled", "false", "--worker-id", "cancel-w")
    try:
        wait_for(lambda: dirs.running(), timeout=30, what="job running")
        api = FileTransport(dirs.jobs, dirs.results, "cancel-api", max_job_bytes=1 << 20)
        assert api.cancel("cancel-me-0001", cancelled_before_start) == "cancelling"
        result = wait_for(lambda: os.path.exists(os.path.join(dirs.results, "cancel-me-0001-result.json"))
                          and dirs.result("cancel-me-0001"), timeout=30, what="cancelled result")
        assert result["status"] == "cancelled" and result["error"]["code"] == "CANCELLED"
        assert "on request" in result["error"]["message"]
        wait_for(lambda: dirs.listing("failed"), timeout=30, what="archived")
        assert dirs.reason("cancel-me-0001.json")["status"] == "cancelled"
        assert [n for n in os.listdir(dirs.jobs) if n.endswith(".json")] == []  # not back in the queue
        assert api.cancel("cancel-me-0001", cancelled_before_start) == "finished"
        assert os.listdir(os.path.join(dirs.jobs, ".cancel")) == []  # the request is gone with the job
        assert proc.poll() is None  # the worker goes on
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_a_reused_job_id_never_overwrites_its_result(dirs):
    """A second job file with the id of a job that has a result: DUPLICATE_JOB_ID, recorded in
    failed/ only; the stored result stays that of the first job."""
    write_job(dirs.jobs, make_job("reused-id-0001", data={"n": 1}), "first.json")
    proc = subprocess.run([sys.executable, "-m", "guestkit_worker", "--once", *dirs.args(),
                           "--metrics-enabled", "false"], env=worker_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = dirs.result("reused-id-0001")
    write_job(dirs.jobs, make_job("reused-id-0001", data={"n": 2}), "second.json")
    proc = subprocess.run([sys.executable, "-m", "guestkit_worker", "--once", *dirs.args(),
                           "--metrics-enabled", "false"], env=worker_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr  # one job rejected
    assert dirs.result("reused-id-0001") == first
    reason = dirs.reason("second.json")
    assert (reason["error"]["code"] == "DUPLICATE_JOB_ID"
            and "already has a result" in reason["error"]["message"])
    assert dirs.listing("done") == ["first.json"] and "reused-id-0001: running" not in proc.stderr


@pytest.mark.parametrize("change, code", [
    ({"extra": 1}, "INVALID_JOB"),                                          # unknown top-level field
    ({"execution": {"priority": 42}}, "INVALID_JOB"),
    ({"operation": "no.such-op", "payload": {"type": "no.such-op.v1", "data": {}}}, "HANDLER_NOT_FOUND"),
    ({"execution": {"deadline": "2020-01-01T00:00:00Z"}}, "DEADLINE_EXCEEDED"),
], ids=["unknown-field", "bad-priority", "unknown-operation", "deadline-passed"])
def test_a_rejected_document_never_overwrites_the_result_of_its_job_id(dirs, change, code):
    """A document rejected at admission that reuses the id of a job with a result: the rejection
    is recorded in failed/ with its reason, and the stored result stays, byte for byte."""
    write_job(dirs.jobs, make_job("reused-id-0002", data={"n": 1}), "first.json")
    cli("--once", *dirs.args(), "--metrics-enabled", "false", check=0)
    path = os.path.join(dirs.results, "reused-id-0002-result.json")
    with open(path, "rb") as fh:
        stored = fh.read()
    assert json.loads(stored)["status"] == "completed"
    write_job(dirs.jobs, dict(make_job("reused-id-0002", data={"n": 2}), **change), "second.json")
    proc = cli("--once", *dirs.args(), "--metrics-enabled", "false", check=1)  # one job rejected
    with open(path, "rb") as fh:
        assert fh.read() == stored, "the completed result was replaced"
    reason = dirs.reason("second.json")
    assert reason["status"] == "rejected" and reason["error"]["code"] == code
    assert dirs.listing("failed") == ["second.json", "second.json.reason.json"]
    assert "no result written: its job id already has a result (completed), which is kept" in proc.stderr



def test_a_rejected_document_stores_no_result_under_the_id_of_a_running_job(dirs):
    """A document rejected at admission (an unknown top-level field) with the id of a job that
    is running: recorded in failed/ with its reason, no result written under that id (the
    running job's result is the one its run stores)."""
    write_job(dirs.jobs, make_job("running-id-0001", "test.sleep", {"seconds": 60}))
    proc = start_worker(dirs, "--metrics-enabled", "false", "--worker-id", "reject-w",
                        "--shutdown-timeout", "0.2")
    try:
        wait_for(lambda: dirs.running(), timeout=30, what="job running")
        write_job(dirs.jobs, make_job("running-id-0001", data={"n": 2}, extra=1), "second.json")
        reason = wait_for(lambda: os.path.exists(os.path.join(dirs.jobs, "failed", "second.json.reason.json"))
                          and dirs.reason("second.json"), timeout=30, what="the rejection recorded")
        assert reason["error"]["code"] == "INVALID_JOB"
        assert not os.path.exists(os.path.join(dirs.results, "running-id-0001-result.json"))
        assert dirs.running() == ["running-id-0001.json.running"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert "no result written: its job id is running" in err


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_sharing_a_jobs_dir_never_run_one_job_id_twice_at_once(dirs, workers):
    """Eight job files with one job id (no result yet) appear while several workers (one slot
    each, so the files are spread over them) watch the queue: the handler runs once; the files
    other workers take while it runs are given back and, after it, rejected as DUPLICATE_JOB_ID
    (failed/ only); the result is the one run's."""
    journal = os.path.join(dirs.base, "journal")
    procs = [start_worker(dirs, "--max-concurrent", "1", "--worker-id", f"id-w{n}",
                          "--metrics-enabled", "false")
             for n in range(workers)]
    try:
        locks = [os.path.join(dirs.jobs, ".processing", f"id-w{n}.lock") for n in range(workers)]
        wait_for(lambda: all(map(os.path.exists, locks)), timeout=60, what="workers started")
        for i in range(8):
            write_job(dirs.jobs, make_job("same-id-0001", "test.sleep", {"seconds": 1.5, "journal": journal}),
                      name=f"same-id-{i:02d}.json")
        wait_for(lambda: len(dirs.listing("done")) + len(dirs.listing("failed")) // 2 == 8, timeout=90,
                 what="all eight files archived")
    finally:
        errs = []
        for p in procs:
            p.terminate()
            errs.append(p.communicate(timeout=60)[1])
    with open(journal) as fh:
        lines = fh.read().split()
    assert lines[0::3] == ["start", "end"], lines  # one run, ended before any other began
    result = dirs.result("same-id-0001")
    assert result["status"] == "completed" and result["data"]["pid"] == int(lines[2])
    # the run's own worker archives its later files of the id as its own stored outcome (done/,
    # no run); the files other workers take after the run are rejected
    failed = [n for n in dirs.listing("failed") if n.endswith(".reason.json")]
    assert failed and len(dirs.listing("done")) + len(failed) == 8
    for name in failed:
        assert dirs.reason(name[:-len(".reason.json")])["error"]["code"] == "DUPLICATE_JOB_ID"
    assert [n for n in os.listdir(dirs.jobs) if n.endswith(".json")] == []
    assert any("already running in another worker" in e for e in errs), errs
