"""The real CLI in subprocesses against real directories: concurrency, timeouts, signals,
multiple workers, crash recovery, idempotency, retries and invalid documents."""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import cli, make_job, start_worker, wait_for, write_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_once_runs_bundled_examples(dirs):
    examples = os.path.join(os.path.dirname(__file__), "..", "examples", "jobs")
    for name in os.listdir(examples):
        with open(os.path.join(examples, name), "rb") as fh:
            write_job(dirs.jobs, fh.read(), name)
    proc = cli("--once", *dirs.args(), check=0)
    results = dirs.all_results()
    assert sorted(results) == ["example-hello-0001", "example-idempotent-0002", "example-routed-0003"]
    assert results["example-hello-0001"]["data"] == {"greeting": "hello from guestkit-worker"}
    assert results["example-idempotent-0002"]["observability"]["correlation_id"] == "example-batch"
    assert all(r["status"] == "completed" for r in results.values())
    assert dirs.listing("done") == ["01-hello.json", "02-idempotent.json", "03-routed.json"]
    assert "completed 3" in proc.stderr


def test_python_dash_m_and_version():
    proc = cli("--version", check=0)
    assert proc.stdout.startswith("guestkit-worker 0.")


def test_max_concurrent_four_overlap(dirs):
    for i in range(8):
        write_job(dirs.jobs, make_job(f"overlap-{i:04d}", "test.sleep", {"seconds": 0.6}))
    cli("--once", "--max-concurrent", "4", *dirs.args(), check=0)
    spans = sorted((r["data"]["start"], r["data"]["end"]) for r in dirs.all_results().values())
    assert len(spans) == 8
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert peak == 4


def test_timeout_kills_child_process(dirs):
    pid_file = os.path.join(dirs.base, "child.pid")
    write_job(dirs.jobs, make_job("timeout-child-01", "test.child", {"pid_file": pid_file},
                                  execution={"timeout_seconds": 1}))
    proc = cli("--once", *dirs.args(), check=1)
    result = dirs.result("timeout-child-01")
    assert result["status"] == "timeout"
    assert result["error"]["code"] == "TIMEOUT"
    child = int(Path(pid_file).read_text())
    assert not pid_alive(child)
    assert dirs.listing("failed") == ["timeout-child-01.json", "timeout-child-01.json.reason.json"]
    assert "timeout after 1s" in proc.stderr


def test_timeout_kills_child_ignoring_sigterm(dirs):
    pid_file = os.path.join(dirs.base, "child.pid")
    write_job(dirs.jobs, make_job("timeout-stubborn", "test.child",
                                  {"pid_file": pid_file, "ignore_sigterm": True},
                                  execution={"timeout_seconds": 1}))
    cli("--once", *dirs.args(), check=1)
    assert dirs.result("timeout-stubborn")["status"] == "timeout"
    assert not pid_alive(int(Path(pid_file).read_text()))


def test_max_job_timeout_caps_document(dirs):
    write_job(dirs.jobs, make_job("capped-timeout", "test.sleep", {"seconds": 30},
                                  execution={"timeout_seconds": 600}))
    cli("--once", "--max-job-timeout", "0.5", *dirs.args(), check=1)
    result = dirs.result("capped-timeout")
    assert result["status"] == "timeout"
    assert result["execution_summary"]["duration_seconds"] < 10


def test_sigterm_with_jobs_in_flight_loses_nothing(dirs):
    for i in range(6):
        write_job(dirs.jobs, make_job(f"inflight-{i:04d}", "test.sleep", {"seconds": 30}))
    proc = start_worker(dirs, "--max-concurrent", "2", "--shutdown-timeout", "0.5",
                        "--metrics-enabled", "false")
    wait_for(lambda: len(dirs.running()) == 2, what="two running jobs")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    waiting = sorted(n for n in os.listdir(dirs.jobs) if n.endswith(".json"))
    assert waiting == [f"inflight-{i:04d}.json" for i in range(6)]  # every job back in the queue
    cancelled = [r for r in dirs.all_results().values() if r["status"] == "cancelled"]
    assert len(cancelled) == 2 and all(r["error"]["code"] == "CANCELLED" for r in cancelled)
    assert os.listdir(os.path.join(dirs.jobs, ".processing")) == [".running-ids.lock"]  # no job held


def test_second_signal_exits_at_once(dirs, tmp_path):
    """A second SIGTERM cancels running jobs at once: processes killed, job returned, exit 130."""
    pid_file = str(tmp_path / "child.pid")
    write_job(dirs.jobs, make_job("child-second-sig", "test.child", {"pid_file": pid_file},
                                  execution={"max_attempts": 1}))
    proc = start_worker(dirs, "--shutdown-timeout", "60", "--metrics-enabled", "false")
    wait_for(lambda: dirs.running() and os.path.exists(pid_file) and Path(pid_file).read_text(),
             what="child running")
    child = int(Path(pid_file).read_text())
    proc.send_signal(signal.SIGTERM)
    for line in proc.stderr:  # the second signal must come after the first was handled
        if "SIGTERM received: stopping" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "second signal (SIGTERM): cancelling running jobs now" in err
    assert "1 job(s) cancelled and returned to the queue" in err
    wait_for(lambda: not os.path.exists(f"/proc/{child}")
             or Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] in "ZX",
             timeout=10, what="child killed")
    result = dirs.result("child-second-sig")
    assert result["status"] == "cancelled" and result["error"]["code"] == "CANCELLED"
    # the job is back in the queue, not left claimed: the next start runs it as the same attempt
    assert os.listdir(dirs.jobs).count("child-second-sig.json") == 1
    assert dirs.running() == []


def test_two_workers_one_jobs_dir_200_jobs(dirs):
    for i in range(200):
        write_job(dirs.jobs, make_job(f"shared-{i:04d}", "test.sleep", {"seconds": 0.005}))
    procs = [subprocess.Popen(["python3", "-m", "guestkit_worker", "--once", *dirs.args(),
                               "--max-concurrent", "4", "--worker-id", f"w{n}"],
                              env=__import__("conftest").worker_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    ran = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ran += re.findall(r"job (shared-[0-9]{4}): running", err)
    results = dirs.all_results()
    assert sorted(results) == [f"shared-{i:04d}" for i in range(200)]
    assert sorted(dirs.listing("done")) == sorted(f"shared-{i:04d}.json" for i in range(200))
    assert sorted(ran) == sorted(results)  # every job's handler ran once, in one of the two workers
    assert {r["worker_id"] for r in results.values()} <= {"w0", "w1"}


def test_recovery_after_sigkill_mid_job(dirs):
    write_job(dirs.jobs, make_job("crash-retry-001", "test.sleep", {"seconds": 60},
                                  execution={"max_attempts": 2}))
    write_job(dirs.jobs, make_job("crash-final-001", "test.sleep", {"seconds": 60}))
    write_job(dirs.jobs, make_job("crash-waiting1", "test.sleep", {"seconds": 0}), "zz-waiting.json")
    proc = start_worker(dirs, "--max-concurrent", "2", "--metrics-enabled", "false", "--worker-id", "doomed")
    running = os.path.join(dirs.jobs, ".processing", "doomed")
    wait_for(lambda: len([n for n in os.listdir(running) if n.endswith(".running")]) == 2
             if os.path.isdir(running) else False, what="both jobs running")
    proc.kill()
    proc.wait(timeout=10)
    assert sorted(os.listdir(running)) == ["crash-final-001.json.running", "crash-retry-001.json.running"]
    # a new worker finds the dead worker's claims (its lock is free) and recovers them;
    # the recovered attempt keeps its 60 s payload, so cap its timeout to finish quickly
    cli("--once", "--max-job-timeout", "1", *dirs.args(), check=1)
    retry = dirs.result("crash-retry-001")
    final = dirs.result("crash-final-001")
    assert retry["execution_summary"]["attempt"] == 2  # re-run as attempt 2 after the crash
    assert retry["status"] == "timeout"
    assert final["status"] == "failed" and final["error"]["code"] == "WORKER_CRASHED"
    assert "doomed" in final["error"]["message"]
    assert dirs.result("crash-waiting1")["status"] == "completed"
    assert not os.path.exists(running)


def test_idempotent_duplicate_not_run_again(dirs):
    key = {"idempotency_key": "nightly-web-01"}
    write_job(dirs.jobs, make_job("idem-first-001", data={"n": 1}, execution=key))
    cli("--once", *dirs.args(), check=0)
    write_job(dirs.jobs, make_job("idem-second-01", data={"n": 2}, execution=key))
    proc = cli("--once", *dirs.args(), check=0)
    second = dirs.result("idem-second-01")
    assert second["duplicate_of"]["job_id"] == "idem-first-001"
    assert second["data"] == {"n": 1}  # the earlier result, not a new run
    assert "already completed by job idem-first-001" in proc.stderr
    assert dirs.result("idem-first-001")["data"] == {"n": 1}


def test_crash_after_the_result_before_the_archive_keeps_result_and_key(dirs):
    """A worker died after its completed result was durable but before it kept the idempotency
    key and archived the job: recovery archives the job, keeps the result and the key, so a
    resubmission with that key is a duplicate and never runs again."""
    key = {"idempotency_key": "after-crash-k"}
    job = make_job("crashed-after-1", data={"n": 1}, execution=key)
    dead = os.path.join(dirs.jobs, ".processing", "gone-worker")
    os.makedirs(dead)
    with open(os.path.join(dead, "a.json.running"), "w") as fh:
        json.dump(job, fh)
    stored = {"job_id": "crashed-after-1", "status": "completed", "completed_at": "2026-11-28T10:00:00Z",
              "worker_id": "gone-worker", "operation": "system.echo",
              "execution_summary": {"attempt": 1}, "data": {"stored": "before the crash"}}
    os.makedirs(dirs.results, exist_ok=True)
    with open(os.path.join(dirs.results, "crashed-after-1-result.json"), "w") as fh:
        json.dump(stored, fh)
    proc = cli("--once", *dirs.args(), check=0)
    assert "result was stored before worker gone-worker died; archiving" in proc.stderr
    assert dirs.listing("done") == ["a.json"]
    assert dirs.result("crashed-after-1") == stored  # not run again, not overwritten
    write_job(dirs.jobs, make_job("resubmitted-01", data={"n": 2}, execution=key))
    cli("--once", *dirs.args(), check=0)
    again = dirs.result("resubmitted-01")
    assert again["duplicate_of"]["job_id"] == "crashed-after-1"
    assert again["data"] == {"stored": "before the crash"}


def test_retry_until_success(dirs):
    write_job(dirs.jobs, make_job("flaky-job-0001", "test.flaky", {"succeed_on": 3},
                                  execution={"max_attempts": 3}))
    proc = cli("--once", *dirs.args(), check=0)
    result = dirs.result("flaky-job-0001")
    assert result["status"] == "completed"
    assert result["execution_summary"]["attempt"] == 3
    assert proc.stderr.count("re-queued as attempt") == 2



def test_a_retry_of_a_large_job_is_requeued_within_the_size_limit(dirs):
    """The next attempt of a 300 KB job is written back as one line (indented, it was 2 MB: over
    --max-job-size, rejected unread as INVALID_JOB_FILE)."""
    path = write_job(dirs.jobs, make_job("flaky-wide-0001", "test.flaky",
                                         {"succeed_on": 2, "items": [[1]] * 60000},
                                         execution={"max_attempts": 2}))
    assert 250_000 < os.path.getsize(path) < 350_000
    cli("--once", *dirs.args(), "--metrics-enabled", "false", check=0)
    result = dirs.result("flaky-wide-0001")
    assert (result["status"], result["execution_summary"]["attempt"]) == ("completed", 2)
    assert dirs.listing("failed") == []


def test_retry_exhausted_fails(dirs):
    write_job(dirs.jobs, make_job("flaky-job-0002", "test.flaky", {"succeed_on": 9},
                                  execution={"max_attempts": 2}))
    cli("--once", *dirs.args(), check=1)
    result = dirs.result("flaky-job-0002")
    outcome = (result["status"], result["error"]["code"], result["execution_summary"]["attempt"])
    assert outcome == ("failed", "FLAKY", 2)


def test_handler_errors_end_with_clear_results(dirs):
    write_job(dirs.jobs, make_job("raises-0000001", "test.raise", {"message": "kaput"}))
    write_job(dirs.jobs, make_job("badresult-00001", "test.badresult"))
    write_job(dirs.jobs, make_job("after-errors-01"))
    write_job(dirs.jobs, make_job("late-invalid-01", "test.raise",
                                  {"field": "image.path", "message": "/img/gone.raw does not exist"}))
    cli("--once", "--max-concurrent", "1", *dirs.args(), check=1)
    assert dirs.result("raises-0000001")["error"]["message"] == "RuntimeError: kaput"
    late = dirs.result("late-invalid-01")  # a check that fails while running keeps its own code
    assert (late["status"], late["error"]["code"], late["error"]["message"], late["error"]["details"]) == (
        "failed", "INVALID_JOB", "image.path: /img/gone.raw does not exist", {"field": "image.path"})
    bad = dirs.result("badresult-00001")
    assert bad["error"]["code"] == "INVALID_RESULT" and "not JSON serializable" in bad["error"]["message"]
    assert dirs.result("after-errors-01")["status"] == "completed"


def test_hung_handler_gets_timeout_result_and_stays_busy(dirs):
    write_job(dirs.jobs, make_job("hung-handler-01", "test.hang", {"seconds": 12},
                                  execution={"timeout_seconds": 1}))
    proc = cli("--once", "--shutdown-timeout", "0", *dirs.args(), check=1, timeout=60)
    result = dirs.result("hung-handler-01")
    assert result["status"] == "timeout"
    assert result["execution_summary"]["duration_seconds"] < 11
    assert "ignores cancellation" in proc.stderr


INVALID = {
    "bad-json.json": (b"{nope", "INVALID_JOB_FILE", "invalid JSON"),
    "empty.json": (b"", "INVALID_JOB_FILE", "empty file"),
    "array.json": (b"[]", "INVALID_JOB_FILE", "must hold a JSON object"),
    "bom.json": (b"\xef\xbb\xbf" + json.dumps(make_job("bom-job-00001")).encode(), "INVALID_JOB_FILE",
                 "byte order mark"),
    "version.json": (make_job("bad-version-01", version="9"), "INVALID_JOB", "version: unsupported"),
    "priority.json": (make_job("bad-priority-1", execution={"priority": 12}), "INVALID_JOB",
                      "execution.priority: must be 1-10, got 12"),
    "unknown-op.json": (make_job("unknown-op-001", "guestkit.teleport"), "HANDLER_NOT_FOUND",
                        "guestkit.teleport"),
    "ptype.json": (make_job("bad-ptype-0001", payload_type="system.other.v1"), "PAYLOAD_TYPE_MISMATCH",
                   "system.other.v1"),
    "caps.json": (make_job("bad-caps-00001", constraints={"required_capabilities": ["gpu.render"]}),
                  "CAPABILITY_MISMATCH", "gpu.render"),
    "expired.json": (make_job("expired-job-01", execution={"deadline": "2020-01-01T00:00:00Z"}),
                     "DEADLINE_EXCEEDED", "has passed"),
    "traversal.json": (make_job("../../etc/passwd"), "INVALID_JOB", "job_id: may only contain"),
    "extra.json": (make_job("extra-field-01", sneaky=True), "INVALID_JOB", "sneaky: unknown top-level field"),
}


def test_invalid_documents_rejected_and_worker_continues(dirs):
    for name, (doc, _, _) in INVALID.items():
        write_job(dirs.jobs, doc, name)
    write_job(dirs.jobs, make_job("good-after-bad"), "zz-good.json")
    cli("--once", *dirs.args(), check=1)
    for name, (_, code, text) in INVALID.items():
        reason = dirs.reason(name)
        assert reason["error"]["code"] == code, name
        assert text in reason["error"]["message"], name
    # a result file too, wherever the job id was usable
    assert dirs.result("bad-priority-1")["error"]["message"] == "execution.priority: must be 1-10, got 12"
    assert not os.path.exists(os.path.join(dirs.base, "etc"))
    assert dirs.result("good-after-bad")["status"] == "completed"
    assert sorted(n for n in dirs.listing("failed") if not n.endswith(".reason.json")) == sorted(INVALID)


def test_job_for_other_pool_left_untouched(dirs):
    doc = make_job("other-pool-001", routing={"worker_pool": "gpu"})
    path = write_job(dirs.jobs, doc)
    before = os.stat(path)
    cli("--once", *dirs.args(), check=0)
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert json.loads(Path(path).read_text()) == doc
    cli("--once", "--pool", "gpu", *dirs.args(), check=0)
    assert dirs.result("other-pool-001")["status"] == "completed"


def test_validate_and_submit(dirs, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(make_job("submit-me-0001")))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(make_job("bad-one-00001", execution={"priority": 0})))
    proc = cli("validate", str(good), str(bad), check=1)
    assert f"{bad}: execution.priority: must be 1-10, got 0" in proc.stdout
    assert f"{good}: ok (submit-me-0001, system.echo)" in proc.stdout
    many = tmp_path / "many.json"
    many.write_text(json.dumps(make_job("a/b", kind="Pod", execution={"priority": 11}, extra=1)))
    proc = cli("validate", str(many), check=1)
    assert proc.stdout.splitlines() == [
        f"{many}: extra: unknown top-level field",
        f"{many}: job_id: must be at least 8 characters, got 3",
        f"{many}: kind: must be 'VMOperation', got \"Pod\"",
        f"{many}: execution.priority: must be 1-10, got 11"]
    proc = cli("submit", str(good), "--jobs-dir", dirs.jobs, check=0)
    placed = os.path.join(dirs.jobs, "submit-me-0001.json")
    assert proc.stdout.strip() == "submit-me-0001 pending"
    assert json.loads(Path(placed).read_text())["job_id"] == "submit-me-0001"
    assert cli("submit", str(good), "--jobs-dir", dirs.jobs).returncode == 0  # the same, already waiting
    assert cli("submit", str(bad), "--jobs-dir", dirs.jobs).returncode == 1
    assert not [n for n in os.listdir(dirs.jobs) if n.startswith(".") and n.endswith(".tmp")]


def test_validate_and_submit_judge_paths_like_the_worker(dirs, tmp_path):
    """validate/submit --allow-path (or GUESTKIT_WORKER_ALLOW_PATH) give the PATH_NOT_ALLOWED
    verdict a worker with that policy would give, before the job is queued."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "disk.raw").write_bytes(b"\0" * 4096)
    job = tmp_path / "inspect.json"
    job.write_text(json.dumps(make_job("allowpath-0001", "guestkit.inspect",
                                       {"image": {"path": str(images / "disk.raw"), "format": "raw"}})))
    proc = cli("validate", str(job), check=0)
    assert proc.stdout.strip() == f"{job}: ok (allowpath-0001, guestkit.inspect)"
    proc = cli("validate", "--allow-path", str(images), str(job), check=0)
    assert proc.stdout.strip() == f"{job}: ok (allowpath-0001, guestkit.inspect)"
    other = tmp_path / "elsewhere"
    proc = cli("validate", "--allow-path", str(other), str(job), check=1)
    assert proc.stdout.strip() == (f"{job}: payload.data.image.path: {images / 'disk.raw'} is outside "
                                   f"the allowed directories ({other})")
    env = __import__("conftest").worker_env(GUESTKIT_WORKER_ALLOW_PATH=f"{other}:{tmp_path / 'also'}")
    proc = cli("submit", str(job), "--jobs-dir", dirs.jobs, env=env, check=1)
    assert "is outside the allowed directories" in proc.stderr
    assert os.listdir(dirs.jobs) == []  # nothing queued
    env = __import__("conftest").worker_env(GUESTKIT_WORKER_ALLOW_PATH=f"{other}:{images}")
    proc = cli("submit", str(job), "--jobs-dir", dirs.jobs, env=env, check=0)
    assert proc.stdout.strip() == "allowpath-0001 pending"
    assert os.listdir(dirs.jobs) == ["allowpath-0001.json"]



def test_submit_queues_the_file_as_it_is_and_refuses_what_workers_would_not_read(dirs, tmp_path):
    """submit writes the job file's own bytes (a 240 KB document is not rewritten indented, to
    1.98 MB, over --max-job-size), and a document over GUESTKIT_WORKER_MAX_JOB_SIZE, the limit
    workers read, is refused with one line, nothing queued (it would be rejected unread,
    without a result)."""
    job = tmp_path / "wide.json"
    job.write_text(json.dumps(make_job("submit-wide-001", data={"items": [[1]] * 60000})))
    size = job.stat().st_size
    assert 230_000 < size < 350_000
    env = __import__("conftest").worker_env(GUESTKIT_WORKER_MAX_JOB_SIZE="100000")
    proc = cli("submit", str(job), "--jobs-dir", dirs.jobs, env=env, check=1)
    assert proc.stderr.strip().splitlines() == [
        f"{job}: file: larger than the limit of 100000 bytes (--max-job-size)"]
    assert os.listdir(dirs.jobs) == []
    proc = cli("submit", str(job), "--jobs-dir", dirs.jobs, check=0)
    with open(os.path.join(dirs.jobs, "submit-wide-001.json"), "rb") as fh:
        assert fh.read() == job.read_bytes()
    cli("--once", *dirs.args(), "--metrics-enabled", "false", check=0)
    assert dirs.result("submit-wide-001")["status"] == "completed"


def test_usage_errors_exit_2(dirs):
    assert cli("--max-concurrent", "0", *dirs.args()).returncode == 2
    assert cli("--textfile-dir", dirs.base, *dirs.args()).returncode == 2  # needs --once
    env = __import__("conftest").worker_env(GUESTKIT_WORKER_MAX_CONCURRENT="many")
    proc = cli("--once", *dirs.args(), env=env)
    assert proc.returncode == 2 and "GUESTKIT_WORKER_MAX_CONCURRENT" in proc.stderr


def test_environment_variables_configure(dirs):
    write_job(dirs.jobs, make_job("env-config-001"))
    env = __import__("conftest").worker_env(GUESTKIT_WORKER_JOBS_DIR=dirs.jobs,
                                            GUESTKIT_WORKER_RESULTS_DIR=dirs.results,
                                            GUESTKIT_WORKER_WORK_DIR=dirs.work, GUESTKIT_WORKER_ONCE="true",
                                            GUESTKIT_WORKER_WORKER_ID="from-env-1")
    cli(env=env, check=0)
    assert dirs.result("env-config-001")["worker_id"] == "from-env-1"


def test_list_operations_shows_engines():
    proc = cli("list-operations", check=0)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert lines["system.echo"].split()[1] == "available"
    assert {"guestkit.inspect", "guestkit.convert", "guestkit.scan", "test.sleep"} <= set(lines)
