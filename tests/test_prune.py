"""Retention: `guestkit-worker prune --older-than DURATION [--dry-run]` on a layout made by real
worker runs: what is finished and older goes; waiting and running jobs, the results of such
jobs, results an idempotency record points to, and anything young stay."""

import fcntl
import json
import os
import time

import pytest
from conftest import cli, make_job, start_worker, wait_for, write_job

from guestkit_worker.cli.prune import parse_duration


def _snapshot(root):
    out = set()
    for d, _, files in os.walk(root):
        out |= {os.path.join(d, f) for f in files}
    return out


@pytest.fixture
def layout(dirs):
    """Jobs run by a real worker, old ones before a mark, young ones 2 s after it."""
    write_job(dirs.jobs, make_job("prune-done-0001"))
    write_job(dirs.jobs, make_job("prune-fail-0001", "test.raise"))
    write_job(dirs.jobs, make_job("prune-rej-00001", execution={"priority": 42}))
    write_job(dirs.jobs, make_job("prune-idem-0001", execution={"idempotency_key": "nightly-01"}))
    write_job(dirs.jobs, make_job("prune-back-0001", "test.sleep", {"seconds": 0}))
    write_job(dirs.jobs, make_job("prune-wait-0001", "test.sleep", {"seconds": 0}))
    cli("--once", "--metrics-enabled", "false", *dirs.args(), check=1)
    # a job sent back to the queue after its first attempt was cancelled: its file waits again
    # and its earlier result must stay until it ends
    os.rename(os.path.join(dirs.jobs, "done", "prune-back-0001.json"),
              os.path.join(dirs.jobs, "prune-back-0001.json"))
    _cancelled_by_a_shutdown(dirs, "prune-back-0001")
    _cancelled_by_a_shutdown(dirs, "prune-wait-0001")  # its job goes back to the queue below
    # a job a live worker is running (claimed, started; the worker's liveness lock held), with
    # its progress file
    running = os.path.join(dirs.jobs, ".processing", "live-worker")
    lock = os.open(running + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.makedirs(running)
    with open(os.path.join(running, "prune-run-0001.json.running"), "w") as fh:
        json.dump(make_job("prune-run-0001"), fh)
    with open(os.path.join(dirs.results, "prune-run-0001-progress.jsonl"), "w") as fh:
        fh.write('{"phase": "convert"}\n')
    # everything above is older than the mark, everything below is 2 s younger: --older-than is
    # computed from the mark when prune runs (see _age), whatever the machine's load
    time.sleep(0.1)
    dirs.mark = time.time()
    time.sleep(2.0)
    write_job(dirs.jobs, make_job("prune-young-001"))
    cli("--once", "--metrics-enabled", "false", *dirs.args(), check=0)  # runs young and back
    # sent back to the queue and not run yet: waiting, with its old first result
    os.rename(os.path.join(dirs.jobs, "done", "prune-wait-0001.json"),
              os.path.join(dirs.jobs, "prune-wait-0001.json"))
    yield dirs
    os.close(lock)


def _cancelled_by_a_shutdown(dirs, job_id):
    """Make job_id's result the one a shutdown stores before giving its job back (a job id with
    any other result is never run again: DUPLICATE_JOB_ID).  Done before the mark: it is old."""
    path = os.path.join(dirs.results, f"{job_id}-result.json")
    with open(path) as fh:
        doc = dict(json.load(fh), status="cancelled", error={
            "code": "CANCELLED", "message": "worker shut down before the job finished", "phase": "execution",
            "recoverable": True, "retry_recommended": True})
    with open(path, "w") as fh:
        json.dump(doc, fh)


def _age(dirs):
    """An age whose cutoff falls between the old and the young files (the CLI starts within 2 s)."""
    return f"{time.time() - dirs.mark:.3f}"


@pytest.mark.integration
def test_prune_removes_what_is_finished_and_old_and_nothing_else(layout):
    dirs = layout
    res = lambda name: os.path.join(dirs.results, name)  # noqa: E731
    done = lambda name: os.path.join(dirs.jobs, "done", name)  # noqa: E731
    failed = lambda name: os.path.join(dirs.jobs, "failed", name)  # noqa: E731
    expected = {
        done("prune-done-0001.json"), res("prune-done-0001-result.json"),
        failed("prune-fail-0001.json"), failed("prune-fail-0001.json.reason.json"),
        res("prune-fail-0001-result.json"),
        failed("prune-rej-00001.json"), failed("prune-rej-00001.json.reason.json"),
        res("prune-rej-00001-result.json"),
        done("prune-idem-0001.json"),  # the job file goes, its result stays (the key points to it)
    }
    before = _snapshot(dirs.base)
    assert expected <= before

    dry = cli("prune", "--older-than", _age(dirs), "--dry-run", "--jobs-dir", dirs.jobs,
              "--results-dir", dirs.results, check=0)
    assert {line[len("would remove "):] for line in dry.stdout.splitlines()} == expected
    assert _snapshot(dirs.base) == before  # a dry run removes nothing

    proc = cli("prune", "--older-than", _age(dirs), "--jobs-dir", dirs.jobs, "--results-dir", dirs.results,
               check=0)
    assert {line[len("removed "):] for line in proc.stdout.splitlines()} == expected
    assert ("removed 9 file(s); kept 2 of waiting or running jobs and 1 result(s) idempotency records "
            "point to") in proc.stderr
    after = _snapshot(dirs.base)
    assert after == before - expected
    # what stayed, and why
    assert res("prune-idem-0001-result.json") in after                     # idempotency record points to it
    assert res("prune-run-0001-progress.jsonl") in after                  # its job is running
    assert os.path.join(dirs.jobs, ".processing", "live-worker", "prune-run-0001.json.running") in after
    assert res("prune-young-001-result.json") in after and done("prune-young-001.json") in after  # young
    assert res("prune-back-0001-result.json") in after                    # re-run since: young again
    assert res("prune-wait-0001-result.json") in after                    # its job waits again
    assert os.path.join(dirs.jobs, "prune-wait-0001.json") in after
    assert any(p.startswith(os.path.join(dirs.results, ".idempotency")) for p in after)  # records kept
    # the idempotency key still deduplicates after the prune
    write_job(dirs.jobs, make_job("prune-idem-0002", execution={"idempotency_key": "nightly-01"}))
    cli("--once", "--metrics-enabled", "false", *dirs.args(), check=0)
    assert dirs.result("prune-idem-0002")["duplicate_of"]["job_id"] == "prune-idem-0001"



@pytest.mark.integration
def test_older_than_0s_removes_everything_finished_and_never_a_waiting_or_running_job(dirs):
    """``--older-than 0s``: everything finished so far goes, however young; a job a live worker
    is running and a job waiting in the queue (with a shutdown's result from an earlier run)
    stay, files and result."""
    write_job(dirs.jobs, make_job("zero-done-0001"))
    write_job(dirs.jobs, make_job("zero-fail-0001", "test.raise"))
    cli("--once", "--metrics-enabled", "false", *dirs.args(), check=1)
    worker = start_worker(dirs, "--metrics-enabled", "false", "--worker-id", "zero-w",
                          "--shutdown-timeout", "0.2")
    try:
        write_job(dirs.jobs, make_job("zero-run-0001", "test.sleep", {"seconds": 60}))
        wait_for(lambda: dirs.running() == ["zero-run-0001.json.running"], timeout=30, what="job running")
        waiting = write_job(dirs.jobs, make_job("zero-wait-0001", routing={"worker_pool": "elsewhere"}))
        _given_back_result(dirs, "zero-wait-0001")
        res = lambda name: os.path.join(dirs.results, name)  # noqa: E731
        failed = os.path.join(dirs.jobs, "failed", "zero-fail-0001.json")
        expected = {os.path.join(dirs.jobs, "done", "zero-done-0001.json"), res("zero-done-0001-result.json"),
                    failed, failed + ".reason.json", res("zero-fail-0001-result.json")}
        before = _snapshot(dirs.base)
        args = ["prune", "--older-than", "0s", "--jobs-dir", dirs.jobs, "--results-dir", dirs.results]
        dry = cli(*args, "--dry-run", check=0)
        assert {line[len("would remove "):] for line in dry.stdout.splitlines()} == expected
        proc = cli(*args, check=0)
        assert {line[len("removed "):] for line in proc.stdout.splitlines()} == expected
        assert "removed 5 file(s); kept 1 of waiting or running jobs" in proc.stderr
        assert _snapshot(dirs.base) == before - expected
        assert dirs.running() == ["zero-run-0001.json.running"] and worker.poll() is None
        assert os.path.exists(waiting) and os.path.exists(res("zero-wait-0001-result.json"))
    finally:
        worker.terminate()
        worker.communicate(timeout=60)


def _given_back_result(dirs, job_id):
    """The result a shutdown stores for a job it gives back to the queue."""
    with open(os.path.join(dirs.results, f"{job_id}-result.json"), "w") as fh:
        json.dump({"job_id": job_id, "status": "cancelled", "error": {
            "code": "CANCELLED", "message": "worker shut down before the job finished", "phase": "execution",
            "recoverable": True, "retry_recommended": True}}, fh)


@pytest.mark.integration
def test_prune_refuses_bad_input_at_the_door(tmp_path, dirs):
    proc = cli("prune", "--older-than", "soon", "--jobs-dir", dirs.jobs, "--results-dir", dirs.results)
    assert proc.returncode == 2 and "expected a duration such as 30d" in proc.stderr
    proc = cli("prune", "--older-than", "30d", "--jobs-dir", str(tmp_path / "typo"),
               "--results-dir", dirs.results)
    assert proc.returncode == 2 and f"--jobs-dir {tmp_path / 'typo'}: no such directory" in proc.stderr
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                          ("2w", 1209600), ("3600", 3600), ("0.5", 0.5), ("0s", 0), ("0", 0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5d", "-0", "3x", "d", "1e9"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)
