"""Faults: SIGKILL at random moments, several workers on one jobs dir, results that cannot be
written (permissions, injected ENOSPC), handlers that misbehave, SIGTERM during a burst.

Every job's runs are counted through the fault.journal handler (tests/faultkit.py), which
appends 'JOB_ID ATTEMPT PID' before doing anything else.  docs/reliability.md maps every case
to its test.
"""

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Dirs, make_job, wait_for, write_job
from faultkit import (
    SHIM_MAIN,
    Worker,
    archived,
    cap_drop_prefix,
    journal_job,
    load_results,
    plugin_env,
    processing,
    read_journal,
    temp_files,
    total,
    waiting,
)
from metricskit import get

from guestkit_worker.runtime.committer import COMMIT_BACKLOG_PER_THREAD

pytestmark = pytest.mark.timeout(240)

#: Seed of the random kill moments; printed in assertion messages, settable to replay a run.
SEED = int(os.environ.get("GKW_FAULT_SEED", time.time_ns() % 1_000_000))


def _write_jobs(dirs, journal, n, prefix, seconds=lambda i: 0.0, **top):
    for i in range(n):
        write_job(dirs.jobs, journal_job(f"{prefix}-{i:05d}", journal, seconds(i), **top))


def _finished(dirs):
    return archived(dirs, "done") + archived(dirs, "failed")


# -- SIGKILL at random moments ------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("ids", ["stable", "fresh"])
def test_sigkill_at_random_moments_loses_nothing(dirs, ids):
    """300 jobs; SIGKILL the worker at a random moment, restart, five times; then let it finish.

    ids=stable restarts with the same --worker-id (as the systemd unit does with %H), fresh
    with a new one each time; both must recover the dead process's claims.
    """
    rng = random.Random(SEED)
    n, kills = 300, 5
    journal = os.path.join(dirs.base, "journal")
    env = plugin_env(dirs.base)
    _write_jobs(dirs, journal, n, "kill", seconds=lambda i: rng.choice((0.0, 0.01, 0.03, 0.08)),
                execution={"max_attempts": kills + 2})
    killed_running = []
    for round_ in range(kills):
        wid = "crashy" if ids == "stable" else f"crashy-{round_}"
        before = sum(len(v) for v in read_journal(journal).values())
        w = Worker(dirs, "--worker-id", wid, "--max-concurrent", "4", env=env, metrics=False,
                   log_name=f"kill-{round_}.log")
        try:
            # kill once some more handlers have started (0: at start-up) ...
            target = before + rng.randint(0, 40)
            wait_for(lambda target=target: sum(len(v) for v in read_journal(journal).values()) >= target
                     or len(_finished(dirs)) == n, timeout=60, what=f"progress before kill {round_}")
            time.sleep(rng.uniform(0, 0.05))  # ... plus a random fraction of a job
            killed_running.append(len([p for p in processing(dirs) if p.endswith(".running")]))
        finally:
            alive = w.proc.poll() is None
            w.kill()
        # the kill must hit a live worker (one that died on its own would prove nothing here)
        assert alive, f"worker exited by itself before kill {round_}: {w.log()[-3000:]}"
    final = Worker(dirs, "--worker-id", "crashy" if ids == "stable" else "survivor", env=env, metrics=False,
                   log_name="final.log")
    try:
        wait_for(lambda: len(_finished(dirs)) == n and not processing(dirs), timeout=120,
                 what=f"all jobs finished (seed {SEED})")
    finally:
        assert final.stop() == 0
    results, broken = load_results(dirs)
    runs = read_journal(journal)
    msg = f"seed {SEED}, running at kills {killed_running}"
    assert not broken, msg
    assert sorted(results) == [f"kill-{i:05d}" for i in range(n)], msg  # none lost
    # each archived once
    assert sorted(archived(dirs, "done")) == [f"kill-{i:05d}.json" for i in range(n)], msg
    assert archived(dirs, "failed") == [] and waiting(dirs) == [] and processing(dirs) == [], msg
    extra_attempts = 0
    for job_id, result in results.items():
        attempts = runs.get(job_id, [])
        assert result["status"] == "completed", (job_id, result["error"], msg)
        # no attempt ran twice; a job ran again only as a later attempt (after a crash), and
        # its result is that of its last attempt
        assert len(attempts) == len(set(attempts)) >= 1, (job_id, attempts, msg)
        assert result["execution_summary"]["attempt"] == max(attempts), (job_id, attempts, msg)
        extra_attempts += max(attempts) - 1
    # each kill interrupts at most the jobs that are .running: --max-concurrent handlers plus
    # the finished ones whose outcome waits for the committer (COMMIT_BACKLOG_PER_THREAD each)
    assert extra_attempts <= kills * 4 * (1 + COMMIT_BACKLOG_PER_THREAD), msg
    assert sum(len(a) for a in runs.values()) <= n + extra_attempts, msg


# -- several workers on one jobs dir ------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("nworkers", [2, 4])
def test_workers_sharing_a_jobs_dir_run_each_job_once(dirs, nworkers):
    n = 1000
    journal = os.path.join(dirs.base, "journal")
    env = plugin_env(dirs.base)
    _write_jobs(dirs, journal, n, "shared")
    workers = [Worker(dirs, "--worker-id", f"share-{k}", "--max-concurrent", "2", env=env,
                      log_name=f"share-{k}.log") for k in range(nworkers)]
    try:
        wait_for(lambda: len(archived(dirs, "done")) == n, timeout=150, what="1000 jobs done")
        # a job is archived just before it is counted: wait (bounded) for the last counts
        samples = wait_for(lambda: (lambda ss: ss if sum(total(s, "guestkit_worker_jobs_total") for s in ss)
                                    >= n else None)([w.samples() for w in workers]),
                           timeout=10, what="counts")
        assert all(w.alive() for w in workers)
    finally:
        for w in workers:
            w.stop()
    results, broken = load_results(dirs)
    assert not broken and len(results) == n
    runs = read_journal(journal)
    assert sorted(runs) == sorted(results) and all(a == [1] for a in runs.values())  # each ran once
    per_worker = [total(s, "guestkit_worker_jobs_total") for s in samples]
    assert sum(per_worker) == n, per_worker
    assert [total(s, "guestkit_worker_jobs_total", status="completed") for s in samples] == per_worker
    by_result = {}
    for r in results.values():
        by_result[r["worker_id"]] = by_result.get(r["worker_id"], 0) + 1
    assert [by_result.get(f"share-{k}", 0) for k in range(nworkers)] == per_worker
    assert processing(dirs) == [] and waiting(dirs) == []


# -- results that cannot be written -------------------------------------------------------

def _assert_nothing_half_written(dirs):
    assert temp_files(dirs.results) == []
    assert [n for n in os.listdir(dirs.results) if n.endswith("-result.json")] == []


@pytest.mark.integration
def test_results_dir_not_writable_then_writable_again(dirs):
    prefix = cap_drop_prefix()  # root without CAP_DAC_OVERRIDE: modes apply to the worker
    w = Worker(dirs, "--worker-id", "ro-results", prefix=prefix)
    try:
        assert get(w.url + "/health")[0] == 200
        idem = os.path.join(dirs.results, ".idempotency")
        os.chmod(dirs.results, 0o555)
        os.chmod(idem, 0o555)
        write_job(dirs.jobs, make_job("ro-results-0001", execution={"idempotency_key": "ro-k"}))
        write_job(dirs.jobs, make_job("ro-rejected-001", execution={"priority": 0}))
        s = wait_for(lambda: (lambda s: s if total(s, "guestkit_worker_result_write_errors_total") >= 4
                              else None)(w.samples()), timeout=60, what="write errors counted")
        assert total(s, "guestkit_worker_jobs_total") == 0  # not counted as ended
        assert archived(dirs, "done") == [] and archived(dirs, "failed") == []  # not marked done
        _assert_nothing_half_written(dirs)
        status, _, body = get(w.url + "/health")
        assert status == 503 and '"results_dir": {"detail":' in body and "Permission denied" in body
        assert "cannot store the outcome ([Errno 13] Permission denied" in w.log()
        os.chmod(dirs.results, 0o755)
        os.chmod(idem, 0o755)
        # an outcome is counted right after its job file is archived: wait for the count
        s = wait_for(lambda: (lambda s: s if total(s, "guestkit_worker_jobs_total") == 2 else None)(
            w.samples()), timeout=60, what="jobs finish once writable")
        assert len(_finished(dirs)) == 2
        assert dirs.result("ro-results-0001")["status"] == "completed"
        assert dirs.result("ro-rejected-001")["error"]["message"] == "execution.priority: must be 1-10, got 0"
        assert len(os.listdir(idem)) == 1
        assert total(s, "guestkit_worker_jobs_total", status="completed") == 1  # counted once, not per try
        assert total(s, "guestkit_worker_jobs_total", status="rejected") == 1
        assert get(w.url + "/health")[0] == 200
    finally:
        os.chmod(dirs.results, 0o755)
        w.ensure_stopped()


@pytest.mark.integration
@pytest.mark.parametrize("threads", ["1", "4"])
def test_disk_full_while_writing_results(dirs, threads):
    """ENOSPC injected at the write call (tests/faultkit.py install_write_faults): the first
    write of each result temp file stores half the bytes, the next fails with ENOSPC.  With
    one job thread the committer writes results, with four the job threads do."""
    flag = os.path.join(dirs.base, "disk-full")
    open(flag, "w").close()
    journal = os.path.join(dirs.base, "journal")
    env = plugin_env(dirs.base, GKW_FAULT_DIR=dirs.results, GKW_FAULT_FLAG=flag)
    w = Worker(dirs, "--worker-id", "enospc", "--max-concurrent", threads, shim=True, env=env)
    try:
        write_job(dirs.jobs, journal_job("full-journal-01", journal))
        write_job(dirs.jobs, make_job("full-echo-0001", data={"n": 1},
                                      execution={"idempotency_key": "full-k"}))
        write_job(dirs.jobs, make_job("full-reject-001", execution={"timeout_seconds": 0}))
        s = wait_for(lambda: (lambda s: s if total(s, "guestkit_worker_result_write_errors_total") >= 6
                              else None)(w.samples()), timeout=60, what="ENOSPC counted")
        assert total(s, "guestkit_worker_jobs_total") == 0
        assert archived(dirs, "done") == [] and archived(dirs, "failed") == []
        _assert_nothing_half_written(dirs)
        assert "cannot store the outcome ([Errno 28] No space left on device)" in w.log()
        # the outcome is stored again after a pause; the handler is not run again for it
        wait_for(lambda: w.log().count("job full-journal-01: cannot store the outcome") >= 2,
                 what="stored again")
        assert read_journal(journal)["full-journal-01"] == [1]
        os.unlink(flag)  # space returns
        wait_for(lambda: len(_finished(dirs)) == 3, timeout=60, what="jobs finish once space returns")
        results, broken = load_results(dirs)
        assert not broken
        assert {k: r["status"] for k, r in results.items()} == {
            "full-journal-01": "completed", "full-echo-0001": "completed", "full-reject-001": "failed"}
        assert results["full-echo-0001"]["data"] == {"n": 1}
        assert read_journal(journal)["full-journal-01"] == [1]  # its handler ran once in all
        assert temp_files(dirs.results) == []
        s = w.counted(3)
        assert total(s, "guestkit_worker_jobs_total", status="completed") == 2
        assert total(s, "guestkit_worker_jobs_total", status="rejected") == 1
        errors = total(s, "guestkit_worker_result_write_errors_total")
        assert errors >= 6
        # the idempotency record was written too: a duplicate is recognised
        write_job(dirs.jobs, make_job("full-echo-0002", execution={"idempotency_key": "full-k"}))
        wait_for(lambda: "full-echo-0002.json" in archived(dirs, "done"), what="duplicate")
        assert dirs.result("full-echo-0002")["duplicate_of"]["job_id"] == "full-echo-0001"
        assert w.alive()
    finally:
        w.ensure_stopped()


# -- handlers that misbehave: results and capacity accounting -------------------------------

@pytest.mark.integration
def test_misbehaving_handlers_keep_capacity_accounting_honest(dirs):
    pid_file = os.path.join(dirs.base, "child.pid")
    w = Worker(dirs, "--worker-id", "misbehave", "--max-concurrent", "3")
    try:
        write_job(dirs.jobs, make_job("hangs-00000001", "test.hang", {"seconds": 8},
                                      execution={"timeout_seconds": 1}))
        wait_for(lambda: os.path.exists(os.path.join(dirs.results, "hangs-00000001-result.json")), timeout=30,
                 what="timeout result of the hung handler")
        assert dirs.result("hangs-00000001")["status"] == "timeout"
        s = w.samples()
        assert total(s, "guestkit_worker_active_jobs") == 1  # its thread is still busy
        status, _, body = get(w.url + "/health")
        assert status == 200 and '"active_jobs": 1' in body
        # the two free slots keep working while it hangs
        write_job(dirs.jobs, make_job("raises-0000001", "test.raise", {"message": "kaput"}))
        write_job(dirs.jobs, make_job("badresult-0001", "test.badresult"))
        write_job(dirs.jobs, make_job("stubborn-child", "test.child",
                                      {"pid_file": pid_file, "ignore_sigterm": True},
                                      execution={"timeout_seconds": 1}))
        write_job(dirs.jobs, make_job("plain-echo-001"))
        wait_for(lambda: len(_finished(dirs)) == 5, timeout=60, what="five results")
        r = dirs.all_results()
        assert r["raises-0000001"]["error"]["message"] == "RuntimeError: kaput"
        assert r["badresult-0001"]["error"]["code"] == "INVALID_RESULT"
        assert (r["stubborn-child"]["status"], r["stubborn-child"]["error"]["code"]) == ("timeout", "TIMEOUT")
        assert r["plain-echo-001"]["status"] == "completed"
        child = int(Path(pid_file).read_text())
        assert not os.path.exists(f"/proc/{child}") or \
            Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # gone, or a zombie
        # once the hung handler returns: nothing active, and its late outcome is discarded
        s = wait_for(lambda: (lambda s: s if total(s, "guestkit_worker_active_jobs") == 0
                              and total(s, "guestkit_worker_jobs_total") == 5 else None)(w.samples()),
                     timeout=30, what="hung handler returned")
        assert dirs.result("hangs-00000001")["status"] == "timeout"
        assert "late outcome (completed) is discarded" in w.log()
        assert total(s, "guestkit_handler_executions_total", handler="test.hang", status="success") == 1
        assert total(s, "guestkit_handler_executions_total", handler="test.raise", status="error") == 1
        assert total(s, "guestkit_handler_executions_total", handler="test.child", status="timeout") == 1
        assert total(s, "guestkit_handler_executions_total") == 5
        assert total(s, "guestkit_worker_jobs_total", status="timeout") == 2
        assert total(s, "guestkit_worker_jobs_total", status="failed") == 2
        assert total(s, "guestkit_worker_jobs_total", status="completed") == 1
        # the full capacity is back: three jobs run at once again
        for i in range(3):
            write_job(dirs.jobs, make_job(f"capacity-{i:05d}", "test.sleep", {"seconds": 1.5}))
        s = wait_for(lambda: (lambda s: s if total(s, "guestkit_worker_active_jobs") == 3 else None)(
            w.samples()), timeout=30, what="three active at once")
        wait_for(lambda: len(_finished(dirs)) == 8, timeout=30, what="capacity jobs done")
        wait_for(lambda: total(w.samples(), "guestkit_worker_active_jobs") == 0, timeout=30,
                 what="none active")
    finally:
        w.ensure_stopped()


# -- SIGTERM during a burst ---------------------------------------------------------------

@pytest.mark.integration
def test_sigterm_during_a_burst_drains_or_returns_every_job(dirs):
    n = 300
    journal = os.path.join(dirs.base, "journal")
    env = plugin_env(dirs.base)
    _write_jobs(dirs, journal, n, "burst", seconds=lambda i: 0.02)
    w = Worker(dirs, "--worker-id", "burst-1", "--max-concurrent", "4", "--shutdown-timeout", "30", env=env,
               metrics=False)
    try:
        wait_for(lambda: len(archived(dirs, "done")) >= 30, timeout=60, what="burst under way")
    finally:
        rc = w.stop()
    assert rc == 0
    done, left = archived(dirs, "done"), waiting(dirs)
    assert 30 <= len(done) < n, "the burst was over before SIGTERM arrived"
    assert sorted(done + left) == [f"burst-{i:05d}.json" for i in range(n)]  # drained or back in the queue
    assert processing(dirs) == [] and archived(dirs, "failed") == []
    results, _ = load_results(dirs)
    assert sorted(results) == sorted(d[:-5] for d in done)
    assert all(r["status"] == "completed" for r in results.values())
    assert sum(len(a) for a in read_journal(journal).values()) == len(done)  # only the drained ones ran
    assert "stopped: completed" in Path(w.log_path).read_text()
    # the rest runs on the next start, each job exactly once overall
    again = Worker(dirs, "--once", env=env, metrics=False, log_name="again.log")
    assert again.proc.wait(timeout=120) == 0
    runs = read_journal(journal)
    assert sorted(runs) == [f"burst-{i:05d}" for i in range(n)] and all(a == [1] for a in runs.values())
    assert len(archived(dirs, "done")) == n and waiting(dirs) == [] and processing(dirs) == []


@pytest.mark.integration
def test_a_job_given_back_at_shutdown_then_crashed_runs_again(dirs):
    """SIGTERM with a short --shutdown-timeout cancels a running job and gives it back (its
    stored result says cancelled); the worker restarts with the same id, runs the job again and
    is SIGKILLed; the next start must not take the given-back result for the crashed run's: the
    job runs again (as attempt 2) and completes, nothing is filed in failed/."""
    journal = os.path.join(dirs.base, "journal")
    env = plugin_env(dirs.base)
    write_job(dirs.jobs, journal_job("given-back-01", journal, 8, execution={"max_attempts": 3}))
    args = ("--worker-id", "same-host", "--shutdown-timeout", "0.2")
    first = Worker(dirs, *args, env=env, metrics=False, log_name="first.log")
    try:
        wait_for(lambda: read_journal(journal).get("given-back-01") == [1], timeout=60, what="first run")
    finally:
        assert first.stop() in (0, 130)
    results, _ = load_results(dirs)
    assert results["given-back-01"]["status"] == "cancelled"  # the shutdown's result is stored
    assert waiting(dirs) == ["given-back-01.json"] and processing(dirs) == []
    second = Worker(dirs, *args, env=env, metrics=False, log_name="second.log")
    try:
        wait_for(lambda: read_journal(journal).get("given-back-01") == [1, 1], timeout=60, what="second run")
    finally:
        second.kill()
    third = Worker(dirs, "--once", *args, env=env, metrics=False, log_name="third.log")
    assert third.proc.wait(timeout=120) == 0, third.log()[-3000:]
    assert read_journal(journal)["given-back-01"] == [1, 1, 2]
    results, _ = load_results(dirs)
    assert results["given-back-01"]["status"] == "completed"
    assert results["given-back-01"]["execution_summary"]["attempt"] == 2
    assert archived(dirs, "done") == ["given-back-01.json"] and archived(dirs, "failed") == []
    assert "archiving" not in third.log()


@pytest.mark.integration
@pytest.mark.parametrize("threads", ["1", "4"])
def test_one_shot_run_with_disk_full_exits_1_and_keeps_the_job(dirs, threads):
    """--once while results cannot be written: the job goes back to jobs/ untouched, no result
    or archive is left, and the run exits 1 (the job did not complete), not 0."""
    flag = os.path.join(dirs.base, "disk-full")
    open(flag, "w").close()
    env = plugin_env(dirs.base, GKW_FAULT_DIR=dirs.results, GKW_FAULT_FLAG=flag)
    write_job(dirs.jobs, make_job("once-full-0001", data={"n": 1}), name="once-full.json")
    proc = subprocess.run([sys.executable, "-c", SHIM_MAIN, "run", *dirs.args(), "--once", "--max-concurrent",
                           threads, "--metrics-enabled", "false"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "cannot store the outcome ([Errno 28] No space left on device)" in proc.stderr
    assert waiting(dirs) == ["once-full.json"] and processing(dirs) == []
    assert archived(dirs, "done") == [] and archived(dirs, "failed") == []
    assert not os.path.exists(os.path.join(dirs.results, "once-full-0001-result.json"))
    _assert_nothing_half_written(dirs)
    os.unlink(flag)  # space returns: the next run completes it
    proc = subprocess.run([sys.executable, "-c", SHIM_MAIN, "run", *dirs.args(), "--once",
                           "--metrics-enabled", "false"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert dirs.result("once-full-0001")["status"] == "completed"
    assert archived(dirs, "done") == ["once-full.json"]


@pytest.mark.integration
def test_disk_full_when_requeueing_a_retry(dirs):
    """A recoverable failure whose next attempt cannot be written (ENOSPC in jobs/): the job file
    goes back unchanged instead of staying claimed; once space returns attempt 2 runs."""
    flag = os.path.join(dirs.base, "disk-full")
    open(flag, "w").close()
    env = plugin_env(dirs.base, GKW_FAULT_DIR=dirs.jobs, GKW_FAULT_FLAG=flag)
    write_job(dirs.jobs, make_job("flaky-enospc-01", "test.flaky", {"succeed_on": 2},
                                  execution={"max_attempts": 2}))
    w = Worker(dirs, "--worker-id", "enospc-retry", shim=True, env=env, metrics=False)
    try:
        refused = "cannot be re-queued as attempt 2 ([Errno 28] No space left on device)"
        wait_for(lambda: w.log().count(refused) >= 2, timeout=30, what="two failed re-queues")
        assert archived(dirs, "done") == [] and archived(dirs, "failed") == []
        assert not os.path.exists(os.path.join(dirs.results, "flaky-enospc-01-result.json"))
        assert temp_files(dirs.jobs) == []
        os.unlink(flag)
        wait_for(lambda: archived(dirs, "done") == ["flaky-enospc-01.json"], timeout=30,
                 what="retry completed")
        result = dirs.result("flaky-enospc-01")
        assert (result["status"], result["execution_summary"]["attempt"]) == ("completed", 2)
        assert processing(dirs) == [] and waiting(dirs) == []
    finally:
        w.ensure_stopped()


@pytest.mark.integration
def test_workers_starting_together_recover_dead_claims_once(dirs):
    """Four workers start at once over the claims of 30 dead workers (half of them started):
    they race to recover the same directories; every claim is recovered by exactly one, none
    fails to start, nothing is left in .processing/."""
    rounds, dead, per_dead = 4, 30, 3
    for r in range(rounds):
        base = os.path.join(dirs.base, f"round-{r}")
        d = Dirs(base)
        journal = os.path.join(base, "journal")
        for k in range(dead):
            claims = os.path.join(d.jobs, ".processing", f"dead-{k}")
            os.makedirs(claims)
            for j in range(per_dead):
                name = write_job(claims, journal_job(f"dead-{k}-{j:05d}", journal,
                                                     execution={"max_attempts": 2}))
                if j == 0:
                    os.rename(name, name + ".running")  # its handler had started
        env = plugin_env(base)
        procs = [subprocess.Popen([sys.executable, "-m", "guestkit_worker", "--once", *d.args(),
                                   "--worker-id", f"live-{n}", "--metrics-enabled", "false"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for n in range(4)]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [e[-1500:] for e in errs]
        held = [n for n in os.listdir(os.path.join(d.jobs, ".processing")) if n != ".running-ids.lock"]
        assert held == [], r
        results, broken = load_results(d)
        assert not broken and len(results) == dead * per_dead
        runs = read_journal(journal)
        for job_id, result in results.items():
            expect = 2 if job_id.endswith("-00000") else 1
            assert result["execution_summary"]["attempt"] == expect and runs[job_id] == [expect], (r, job_id)
        recovered = sum(len(re.findall(r"recovering \S+ left by dead worker dead-", e)) for e in errs)
        assert recovered == dead * per_dead, r


@pytest.mark.integration
def test_a_reused_job_file_name_never_replaces_a_job(dirs):
    """A producer writes x.json again while the first x.json runs: the second waits until the
    first is done, and a first one sent back to the queue (SIGTERM) takes a fresh name instead
    of replacing the waiting one."""
    w = Worker(dirs, "--worker-id", "reuse", "--max-concurrent", "2", "--shutdown-timeout", "0.5")
    try:
        write_job(dirs.jobs, make_job("reuse-first-001", "test.sleep", {"seconds": 1.5}), "x.json")
        wait_for(lambda: dirs.running() == ["x.json.running"], what="first x.json running")
        write_job(dirs.jobs, make_job("reuse-second-01"), "x.json")
        wait_for(lambda: len(archived(dirs, "done")) == 2, timeout=30, what="both x.json done")
        assert {r["job_id"]: r["status"] for r in dirs.all_results().values()} == {
            "reuse-first-001": "completed", "reuse-second-01": "completed"}
        assert dirs.listing("done")[0] == "x.json" and dirs.listing("done")[1].startswith("x.json.")
        write_job(dirs.jobs, make_job("reuse-long-0001", "test.sleep", {"seconds": 60}), "y.json")
        wait_for(lambda: dirs.running() == ["y.json.running"], what="y.json running")
        write_job(dirs.jobs, make_job("reuse-waiting01", "test.sleep", {"seconds": 60}), "y.json")
        # the worker sees the second y.json (queue depth 1) and leaves it waiting
        wait_for(lambda: total(w.samples(), "guestkit_worker_queue_depth") == 1, what="second y.json seen")
        assert dirs.running() == ["y.json.running"] and waiting(dirs) == ["y.json"]
    finally:
        assert w.stop() == 0
    back = {n: json.loads(Path(dirs.jobs, n).read_text())["job_id"] for n in waiting(dirs)}
    assert sorted(back.values()) == ["reuse-long-0001", "reuse-waiting01"], back
    assert back["y.json"] == "reuse-waiting01"
    assert processing(dirs) == []


# -- temp files left by a SIGKILL between create and rename ------------------------------

def _touch(path, age, data=b"{}"):
    with open(path, "wb") as fh:
        fh.write(data)
    t = time.time() - age
    os.utime(path, (t, t), follow_symlinks=False)
    return path


@pytest.mark.integration
def test_stale_temp_files_are_removed_at_start(dirs):
    """atomic.write_bytes' temp files ('.NAME.PID.N.tmp') older than the threshold go when a
    worker starts; fresh ones (a write in progress on another host) and anything not of
    exactly that pattern stay: producers' temp files, links (not followed), directories, other
    directories' files."""
    from guestkit_worker.system.tempfiles import TEMP_FILE_MAX_AGE_SECONDS
    old, fresh = TEMP_FILE_MAX_AGE_SECONDS + 60, TEMP_FILE_MAX_AGE_SECONDS - 60
    idem = os.path.join(dirs.results, ".idempotency")
    failed = os.path.join(dirs.jobs, "failed")
    done = os.path.join(dirs.jobs, "done")
    for d in (idem, failed, done):
        os.makedirs(d, exist_ok=True)
    stale = [_touch(os.path.join(dirs.results, ".gone-0000001-result.json.4242.0.tmp"), old),
             _touch(os.path.join(dirs.results, ".gone-0000002-result.json.7.1234567.tmp"), 86400 * 30),
             _touch(os.path.join(idem, "." + "a" * 64 + ".json.99999.3.tmp"), old),
             _touch(os.path.join(dirs.jobs, ".gone-0000003.json.1.0.tmp"), old),  # a re-queue
             _touch(os.path.join(dirs.jobs, ".gone.1776000000.json.31337.12.tmp"), old),
             _touch(os.path.join(failed, ".x.json.reason.json.555.2.tmp"), old)]
    victim = _touch(os.path.join(dirs.base, "victim.json"), old, b"untouched")
    link = os.path.join(dirs.results, ".link-000001-result.json.4242.9.tmp")
    os.symlink(victim, link)
    os.utime(link, (time.time() - old,) * 2, follow_symlinks=False)
    a_dir = os.path.join(dirs.jobs, ".dir-0000001.json.12.3.tmp")
    os.mkdir(a_dir)
    os.utime(a_dir, (time.time() - old,) * 2)
    # the first three are fresh: being written
    kept = [_touch(os.path.join(dirs.results, ".fresh-000001-result.json.4242.5.tmp"), fresh),
            _touch(os.path.join(idem, "." + "b" * 64 + ".json.8.0.tmp"), 1),
            _touch(os.path.join(dirs.jobs, ".fresh-000002.json.77.1.tmp"), fresh),
            _touch(os.path.join(dirs.jobs, "producer-0001.json.tmp"), old),   # write NAME.tmp, then rename
            _touch(os.path.join(dirs.jobs, ".producer-0002.json.tmp"), old),  # no pid and counter
            _touch(os.path.join(dirs.jobs, ".producer-0003.json.12345.tmp"), old),  # one number only
            _touch(os.path.join(dirs.jobs, ".producer-0004.json.pid.1.tmp"), old),  # pid not digits
            _touch(os.path.join(dirs.jobs, ".producer-0005.json.1.2.tmp~"), old),
            _touch(os.path.join(dirs.jobs, "..1.2.tmp"), old),  # no name
            _touch(os.path.join(dirs.results, "gone-0000004-result.json.1.2.tmp"), old),  # no leading dot
            _touch(os.path.join(done, ".old-0000001.json.1.2.tmp"), old),  # not a directory writes go to
            _touch(os.path.join(dirs.work, ".old-0000002.json.1.2.tmp"), old),
            link, a_dir, victim]
    write_job(dirs.jobs, make_job("sweep-echo-0001"))
    w = Worker(dirs, "--once", "--worker-id", "sweeper", metrics=False)
    assert w.proc.wait(timeout=60) == 0, w.log()[-3000:]
    assert dirs.result("sweep-echo-0001")["status"] == "completed"
    assert [p for p in stale if os.path.lexists(p)] == []
    assert [p for p in kept if not os.path.lexists(p)] == []
    assert os.path.islink(link) and Path(victim).read_bytes() == b"untouched"
    log = w.log()
    for p in stale:
        assert re.search(rf"WARNING .*removed stale temp file {re.escape(p)} ", log), p
    assert log.count("removed stale temp file") == len(stale)


def test_a_daemon_sweeps_temp_files_again_while_it_runs(dirs, monkeypatch):
    """A worker killed after this one started leaves temp files: the daemon's main loop
    sweeps again every TEMP_SWEEP_INTERVAL_SECONDS (in a thread of its own)."""
    from prometheus_client import CollectorRegistry

    from guestkit_worker.runtime import worker as worker_mod
    from guestkit_worker.system.tempfiles import TEMP_FILE_MAX_AGE_SECONDS
    cfg = worker_mod.WorkerConfig(jobs_dir=dirs.jobs, results_dir=dirs.results, work_dir=dirs.work,
                                  worker_id="sweep-daemon", poll_interval=0.05, durable=False)
    w = worker_mod.Worker(cfg, registry=CollectorRegistry())
    w.open()
    try:
        left = _touch(os.path.join(dirs.results, ".late-000001-result.json.999.0.tmp"),
                      TEMP_FILE_MAX_AGE_SECONDS + 1)
        w._tick()  # within the interval: not yet
        assert os.path.exists(left)
        monkeypatch.setattr(worker_mod, "TEMP_SWEEP_INTERVAL_SECONDS", 0.0)
        w._tick()
        w._sweeper.join(timeout=10)
        assert not os.path.exists(left)
    finally:
        w.transport.close()
