"""The life of a worker process on the Redis Streams transport, against a real redis-server
(tests/redisfixture.py) and real worker processes (faultkit.Worker): a stop while it waits for
Redis at start, a second process taking its worker id, and Redis away for longer than a lease.
"""

import signal
import time

import pytest
from conftest import Dirs, wait_for
from faultkit import Worker, journal_job, plugin_env
from redisfixture import free_port, require_redis_py, start_redis
from test_redis_fleet import Fleet, final_results, group_info, health, metric, producer, read_runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _redis_py():
    require_redis_py()


def redis_args(url, pool, *extra):
    return ["--transport", "redis", "--redis-url", url, "--pool", pool, *extra]


def stop_and_time(w, timeout=15):
    """SIGTERM w; (exit status, seconds it took to exit)."""
    w.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    rc = w.proc.wait(timeout=timeout)
    return rc, time.monotonic() - started


def test_sigterm_while_waiting_for_redis_at_start_stops_at_once(tmp_path, pool):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    w = Worker(Dirs(tmp_path / "w"), *redis_args(url, pool, "--worker-id", "early-stop"), metrics=False)
    try:
        wait_for(lambda: "trying again in" in w.log(), timeout=60, what="the worker waiting for Redis")
        rc, took = stop_and_time(w)
        log = w.log()
        assert rc == 0 and took < 5, (rc, took, log[-2000:])
        assert f"stop requested while waiting for redis at {url}" in log
        assert "stopped before taking any job; exit status 0" in log
    finally:
        w.ensure_stopped()


def test_sigterm_while_waiting_for_its_worker_id_stops_at_once(tmp_path, redis_server, pool):
    from guestkit_worker.transports.redis import Keys
    redis_server.client().set(Keys(pool).alive("busy-id"), "another-process", px=120_000)
    w = Worker(Dirs(tmp_path / "w"), *redis_args(redis_server.url, pool, "--worker-id", "busy-id"),
               metrics=False)
    try:
        wait_for(lambda: "waiting up to a lease for it to expire" in w.log(), timeout=60,
                 what="the worker waiting for its worker id")
        rc, took = stop_and_time(w)
        log = w.log()
        assert rc == 0 and took < 5, (rc, took, log[-2000:])
        assert "stop requested while waiting for worker id busy-id to be free" in log
        assert "stopped before taking any job; exit status 0" in log
    finally:
        w.ensure_stopped()


def test_a_worker_whose_id_another_process_took_while_it_was_paused_stops(tmp_path, redis_server, pool):
    """A (worker id X) SIGSTOPped past its lease while a job runs; B starts with id X (the key
    has expired), takes A's job back and runs it as attempt 2; A, resumed, finds the liveness
    key naming B: it stops with EXIT_WORKER_ID_TAKEN and one line; B goes on serving."""
    from guestkit_worker.cli.exitcodes import EXIT_WORKER_ID_TAKEN
    from guestkit_worker.transports.redis import Keys
    journal = tmp_path / "journal"
    env = plugin_env(tmp_path)
    args = redis_args(redis_server.url, pool, "--worker-id", "twin", "--lease-seconds", "2",
                      "--max-concurrent", "2")
    r, key = redis_server.client(), Keys(pool).alive("twin")
    t = producer(redis_server, pool)
    a = Worker(Dirs(tmp_path / "a"), *args, env=env, log_name="a.log")
    b = None
    try:
        a.wait_running()
        t.submit(journal_job("twin-long-001", journal, seconds=6, execution={"max_attempts": 3}))
        wait_for(lambda: read_runs(journal), timeout=60, what="the job to start on a")
        a.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not r.exists(key), timeout=30, what="a's liveness key to expire")
            b = Worker(Dirs(tmp_path / "b"), *args, env=env, log_name="b.log")
            b.wait_running()
        finally:
            a.proc.send_signal(signal.SIGCONT)
        rc = a.proc.wait(timeout=60)  # before: a went on serving beside b, without a word
        log = a.log()
        assert rc == EXIT_WORKER_ID_TAKEN, (rc, log[-3000:])
        (line,) = [x for x in log.splitlines() if "was taken over by another live process" in x]
        assert "worker id twin" in line and "--worker-id" in line
        assert f"exit status {EXIT_WORKER_ID_TAKEN}: another live process took" in log
        assert f":{b.pid}:" in r.get(key).decode() and b.alive()  # the key is b's, b serves on
        ids = [f"twin-after-{i:03d}" for i in range(6)]
        for job_id in ids:
            t.submit(journal_job(job_id, journal))
        for job_id in ids + ["twin-long-001"]:
            assert t.wait_result(job_id, 60)["status"] == "completed", job_id
        runs = read_runs(journal)
        assert [(j, n, p) for j, n, p in runs if j == "twin-long-001"] == [
            ("twin-long-001", 1, a.pid), ("twin-long-001", 2, b.pid)]
        assert sorted((j, n, p) for j, n, p in runs if j != "twin-long-001") == [(j, 1, b.pid) for j in ids]
        assert t.get_result("twin-long-001")["execution_summary"]["attempt"] == 2
        assert r.xpending(Keys(pool).jobs, "guestkit-workers")["pending"] == 0 and b.alive()
    finally:
        for w in (a, b):
            if w is not None:
                w.ensure_stopped()


def test_jobs_running_through_a_redis_outage_longer_than_the_lease_run_once(tmp_path, pool):
    """Redis SIGKILLed for three leases while six jobs run on two workers (lease 3 s): three end
    during the outage (their outcomes wait to be stored), three run on past their lease's end.
    Once Redis is back every owner renews and stores first: no job is taken over or re-run."""
    lease = 3.0
    server = start_redis(tmp_path / "redis")
    journal = tmp_path / "journal"
    ids = [f"outage-short-{i}" for i in range(3)] + [f"outage-long-{i}" for i in range(3)]
    fleet = Fleet(tmp_path, server, pool, lease=int(lease), threads=3)
    try:
        workers = [fleet.start("outage-a"), fleet.start("outage-b")]
        t = producer(server, pool)
        for job_id in ids:
            seconds = 1.5 if "short" in job_id else 2 * lease
            t.submit(journal_job(job_id, journal, seconds=seconds, execution={"max_attempts": 3}))
        wait_for(lambda: len(read_runs(journal)) == len(ids), timeout=60, what="every job running")
        server.kill()
        down_until = time.monotonic() + 3 * lease
        for w in workers:
            wait_for(lambda w=w: health(w)[0] == 503, timeout=30, what="/health 503")
        time.sleep(max(0.0, down_until - time.monotonic()))  # Redis stays away for three leases
        server.restart()
        t = producer(server, pool)
        results = wait_for(lambda: (lambda r: r if len(r) == len(ids) else None)(final_results(t, ids)),
                           timeout=90, interval=0.2, what="every result")
        runs = read_runs(journal)
        assert sorted((j, a) for j, a, _ in runs) == sorted((j, 1) for j in ids), runs  # one run each
        assert {j: (r["status"], r["execution_summary"]["attempt"]) for j, r in results.items()} == \
            {j: ("completed", 1) for j in ids}
        for w in workers:
            assert metric(w, "guestkit_worker_jobs_reclaimed_total") == 0
            assert metric(w, "guestkit_worker_leases_lost_total") == 0
        assert any("jobs of other workers are taken over only 3s after that" in w.log() for w in workers)
        info = group_info(server, pool)
        assert info["group"]["pending"] == 0 and info["xlen"] == 0 and info["dead"] == []
    finally:
        fleet.stop_all()
        server.stop()


def test_sigterm_while_redis_is_away_and_an_outcome_waits_ends_within_the_shutdown_timeout(tmp_path, pool):
    """Redis SIGKILLed after a job ran: its outcome cannot be stored.  A SIGTERM then ends the
    worker within --shutdown-timeout (the store retries end with the stop), and the job stays
    pending in Redis for recovery (nothing lost)."""
    from guestkit_worker.transports.redis import GROUP, Keys
    server = start_redis(tmp_path / "redis")
    journal = tmp_path / "journal"
    args = redis_args(server.url, pool, "--worker-id", "away-stop", "--shutdown-timeout", "5")
    w = Worker(Dirs(tmp_path / "w"), *args, env=plugin_env(tmp_path), metrics=False)
    try:
        w.wait_running()
        producer(server, pool).submit(journal_job("away-stop-001", journal, seconds=1))
        wait_for(lambda: read_runs(journal), timeout=60, what="the job to start")
        server.kill()
        wait_for(lambda: "storing 1 outcome(s)" in w.log(), timeout=30, what="the store retries")
        rc, took = stop_and_time(w, timeout=120)  # before: 5 s + 7 s + 30 s of store grace, 42 s
        assert rc == 0 and took < 15, (rc, took)
        assert "outcomes still not stored" not in w.log()
        server.restart()
        assert server.client().xpending(Keys(pool).jobs, GROUP)["pending"] == 1  # kept for recovery
    finally:
        w.ensure_stopped()
        server.stop()
