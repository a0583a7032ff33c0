"""A fleet of real worker processes on one real redis-server (the README's "A fleet on Redis").

Every job is a ``fault.journal`` job (tests/faultkit.py): each run appends ``JOB_ID ATTEMPT
PID`` to a journal before anything else, so the tests count how often each job ran and in
which process.  Each test checks: every job has exactly one final result, none is lost, none
ran twice except the documented re-run (attempt + 1) of an attempt whose worker died or lost
its lease, the expected dead letters, an empty pending list and ``queue_depth`` 0 at the end.
"""

import json
import signal
import subprocess
import sys
import time

import fleetkit
import pytest
from conftest import wait_for
from faultkit import journal_job, plugin_env, read_runs
from fleetkit import long_job_taken, metric, stop_past_lease
from metricskit import scrape
from redisfixture import require_redis_py, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GROUP = "guestkit-workers"


@pytest.fixture(autouse=True)
def _redis_py():
    require_redis_py()


def fleet_args(server, pool, *, lease=2, threads=2):
    return ["--transport", "redis", "--redis-url", server.url, "--pool", pool, "--lease-seconds", str(lease),
            "--max-concurrent", str(threads)]


class Fleet(fleetkit.Fleet):
    """Worker processes of one Redis pool."""

    def __init__(self, tmp_path, server, pool, **kw):
        super().__init__(tmp_path, fleet_args(server, pool, **kw))


def producer(server, pool):
    from guestkit_worker.transports.redis import RedisTransport
    t = RedisTransport(server.url, "test-producer", pool=pool)
    t.link.connect()  # a producer needs no open(); the tests read keys through its client
    return t


def final_results(t, ids):
    pipe = t.link.r.pipeline(transaction=False)
    for job_id in ids:
        pipe.get(t.k.result(job_id))
    return {j: json.loads(r) for j, r in zip(ids, pipe.execute()) if r}


def group_info(server, pool):
    from guestkit_worker.transports.redis import Keys
    r = server.client()
    k = Keys(pool)
    (g,) = [g for g in r.xinfo_groups(k.jobs) if g["name"] == GROUP.encode()]
    return {"group": g, "xlen": r.xlen(k.jobs), "dead": r.xrange(k.dead)}


def test_three_workers_drain_1000_jobs_with_one_sigkilled(tmp_path, redis_server, pool):
    journal = tmp_path / "journal"
    ids = [f"fleet-{i:05d}" for i in range(1000)]
    t = producer(redis_server, pool)
    fleet = Fleet(tmp_path, redis_server, pool, lease=2, threads=2)
    try:
        for job_id in ids:
            doc = journal_job(job_id, journal, seconds=0.01, execution={"max_attempts": 3})
            assert t.submit(doc).outcome == "created"
        w1, w2, w3 = (fleet.start(n) for n in ("fleet-w1", "fleet-w2", "fleet-w3"))
        wait_for(lambda: len(final_results(t, ids)) >= 300, timeout=240, interval=0.2, what="300 results")
        w1.proc.send_signal(signal.SIGKILL)  # mid-run: it holds running jobs and taken ones
        w1.proc.wait(10)
        wait_for(lambda: len(final_results(t, ids)) == 1000, timeout=300, interval=0.5, what="1000 results")
        results = final_results(t, ids)
        runs = read_runs(journal)
        by_job = {}
        for job_id, attempt, pid in runs:
            by_job.setdefault(job_id, []).append((attempt, pid))
        assert sorted(by_job) == ids  # no job lost
        assert all(r["status"] == "completed" for r in results.values())
        rerun = {j: rs for j, rs in by_job.items() if len(rs) > 1}
        for job_id, rs in rerun.items():  # the documented re-run of an attempt the killed worker had started
            assert [a for a, _ in rs] == [1, 2] and rs[0][1] == w1.pid, (job_id, rs)
            assert results[job_id]["execution_summary"]["attempt"] == 2
        # a job the killed worker had marked started whose handler had not yet written the
        # journal ran once, as attempt 2; every other job ran once as attempt 1
        late = {j for j, rs in by_job.items() if len(rs) == 1 and rs[0][0] == 2}
        for job_id, rs in by_job.items():
            if len(rs) == 1:
                assert results[job_id]["execution_summary"]["attempt"] == rs[0][0] in (1, 2)
        # its 2 job threads, and at most 4 outcomes each waiting to be stored
        assert len(rerun) + len(late) <= 2 * (1 + 4), (rerun, late)
        info = wait_for(lambda: (lambda i: i if i["group"]["pending"] == 0 and i["xlen"] == 0 else None)(
            group_info(redis_server, pool)), timeout=30, what="an empty pending list")
        assert info["dead"] == [] and info["group"]["lag"] in (0, None)
        for w in (w2, w3):
            wait_for(lambda w=w: metric(w, "guestkit_worker_queue_depth") == 0, timeout=30,
                     what="queue_depth 0")
        reclaimed = sum(metric(w, "guestkit_worker_jobs_reclaimed_total") for w in (w2, w3))
        assert reclaimed >= len(rerun) + len(late)
        print(f"\nfleet: {len(ids)} jobs, {len(runs)} runs, {len(rerun)} re-run and {len(late)} run as "
              f"attempt 2 after SIGKILL of {w1.name}, "
              f"reclaimed {reclaimed:.0f}; XINFO GROUPS {info['group']}; XLEN {info['xlen']}")
        shown = ("guestkit_worker_jobs_reclaimed_total", "guestkit_worker_leases_lost_total",
                 "guestkit_worker_dead_lettered_total",
                 "guestkit_worker_transport_errors_total{operation=\"commit", "guestkit_worker_queue_depth",
                 "guestkit_worker_jobs_total{operation=\"fault.journal\",status=\"co")
        for w in (w2, w3):
            print(w.name, [line for line in scrape(w.url).splitlines() if line.startswith(shown)])
    finally:
        fleet.stop_all()


def test_a_worker_stopped_past_its_lease_loses_the_job_to_another(tmp_path, redis_server, pool):
    journal = tmp_path / "journal"
    t = producer(redis_server, pool)
    fleet = Fleet(tmp_path, redis_server, pool, lease=2, threads=1)
    try:
        a, b = long_job_taken(fleet, t, journal, "stopped-job-001", ("stop-a", "stop-b"))
        stop_past_lease(a, journal)
        result = t.wait_result("stopped-job-001", 60)
        assert result["worker_id"] == "stop-b" and result["execution_summary"]["attempt"] == 2
        assert [(j, att, pid) for j, att, pid in read_runs(journal)] == [
            ("stopped-job-001", 1, a.pid), ("stopped-job-001", 2, b.pid)]
        wait_for(lambda: metric(a, "guestkit_worker_leases_lost_total") >= 1, timeout=30,
                 what="a's lost lease")
        assert t.get_result("stopped-job-001")["worker_id"] == "stop-b"
        assert metric(b, "guestkit_worker_jobs_reclaimed_total") == 1
        info = group_info(redis_server, pool)
        assert info["group"]["pending"] == 0 and info["xlen"] == 0
        assert a.proc.poll() is None  # the worker that lost its lease lives on
    finally:
        fleet.stop_all()


def test_redis_sigkilled_and_restarted_mid_run_loses_nothing(tmp_path, pool):
    server = start_redis(tmp_path / "redis")
    journal = tmp_path / "journal"
    ids = [f"outage-{i:04d}" for i in range(150)]
    fleet = Fleet(tmp_path, server, pool, lease=3, threads=2)
    try:
        t = producer(server, pool)
        for job_id in ids:
            t.submit(journal_job(job_id, journal, seconds=0.05, execution={"max_attempts": 3}))
        w1, w2 = fleet.start("outage-w1"), fleet.start("outage-w2")
        wait_for(lambda: len(final_results(t, ids)) >= 40, timeout=120, interval=0.2, what="40 results")
        server.kill()
        status, body = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(health(w1)), timeout=30,
                                what="/health 503")
        assert body["checks"]["transport"]["ok"] is False
        time.sleep(2)  # Redis stays away for a while; workers keep running
        assert w1.proc.poll() is None and w2.proc.poll() is None
        server.restart()
        wait_for(lambda: health(w1)[0] == 200, timeout=60, what="/health 200 again")
        t = producer(server, pool)
        try:
            wait_for(lambda: len(final_results(t, ids)) == len(ids), timeout=240, interval=0.5,
                     what="all results")
        except AssertionError as exc:  # say which jobs and where they are, with the workers' logs
            missing = sorted(set(ids) - set(final_results(t, ids)))
            info = group_info(server, pool)
            pending = server.client().xpending(t.k.jobs, GROUP)
            logs = "\n".join(f"--- {w.name}\n" + "\n".join(
                line for line in w.log().splitlines()
                if any(j in line for j in missing[:5]) or "ERROR" in line or "WARNING" in line
            )[-6000:] for w in (w1, w2))
            raise AssertionError(f"{exc}: missing {missing[:20]} ({len(missing)}); {info}; "
                                 f"pending {pending}\n" + logs) from None
        results = final_results(t, ids)
        runs = read_runs(journal)
        by_job = {}
        for job_id, attempt, _ in runs:
            by_job.setdefault(job_id, []).append(attempt)
        assert sorted(by_job) == ids
        for job_id, attempts in by_job.items():  # a job runs again only as a higher attempt
            assert attempts == sorted(set(attempts)), (job_id, attempts)
            assert results[job_id]["execution_summary"]["attempt"] == attempts[-1]
            assert results[job_id]["status"] == "completed"
        info = wait_for(lambda: (lambda i: i if i["group"]["pending"] == 0 and i["xlen"] == 0 else None)(
            group_info(server, pool)), timeout=60, what="an empty pending list")
        assert info["dead"] == []
        errors = sum(metric(w, "guestkit_worker_transport_errors_total") for w in (w1, w2))
        assert errors > 0
        for w in (w1, w2):
            wait_for(lambda w=w: metric(w, "guestkit_worker_queue_depth") == 0, timeout=30,
                     what="queue_depth 0")
        print(f"\nredis restart: {len(ids)} jobs, {len(runs)} runs, "
              f"{sum(1 for a in by_job.values() if len(a) > 1)} re-run, transport errors {errors:.0f}")
    finally:
        fleet.stop_all()
        server.stop()


def health(w):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(w.url.rstrip("/") + "/health", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return None, None


def test_poison_entry_added_with_redis_cli_is_dead_lettered(tmp_path, redis_server, pool):
    from guestkit_worker.transports.redis import Keys
    k = Keys(pool)
    journal = tmp_path / "journal"
    fleet = Fleet(tmp_path, redis_server, pool)
    try:
        w = fleet.start("poison-w1")
        redis_server.cli("XADD", k.jobs, "*", "job", "{this is not json")
        redis_server.cli("XADD", k.jobs, "*", "job", json.dumps({"version": "1.0", "no": "job id"}))
        redis_server.cli("XADD", k.jobs, "*", "job", json.dumps(journal_job("after-poison-01", journal)))
        t = producer(redis_server, pool)
        assert t.wait_result("after-poison-01", 60)["status"] == "completed"
        dead = wait_for(lambda: (lambda d: d if len(d) == 2 else None)(redis_server.client().xrange(k.dead)),
                        timeout=30, what="two dead letters")
        assert [f[b"reason"] for _, f in dead] == [b"not_json", b"no_job_id"]
        assert dead[0][1][b"job"] == b"{this is not json"
        assert metric(w, "guestkit_worker_dead_lettered_total", reason="not_json") == 1
        assert metric(w, "guestkit_worker_dead_lettered_total", reason="no_job_id") == 1
        info = group_info(redis_server, pool)
        assert info["group"]["pending"] == 0 and info["xlen"] == 0 and w.proc.poll() is None
        assert read_runs(journal) == [("after-poison-01", 1, w.pid)]
    finally:
        fleet.stop_all()


def test_the_workers_routing_verdict_decides_what_leaves_the_pool(tmp_path, redis_server, pool):
    """A job routed to another pool sits in this pool's stream, where no worker can ever take it:
    the worker's intake says so (other_pool) and the transport dead-letters it as
    not_for_this_pool.  A job pinned to another worker id of this pool is only given back
    (not_for_me): it waits for that worker, which runs it."""
    from guestkit_worker.transports.redis import Keys
    k = Keys(pool)
    journal = tmp_path / "journal"
    t = producer(redis_server, pool)
    fleet = Fleet(tmp_path, redis_server, pool)
    try:
        routed = journal_job("routed-gpu-001", journal, routing={"worker_pool": "gpu"})
        assert t.submit(routed).outcome == "created"
        pinned = journal_job("pinned-w2-0001", journal, routing={"worker_id": "route-w2"})
        assert t.submit(pinned).outcome == "created"
        w1 = fleet.start("route-w1")
        dead = wait_for(lambda: redis_server.client().xrange(k.dead), timeout=60, what="the dead letter")
        assert [f[b"reason"] for _, f in dead] == [b"not_for_this_pool"]
        assert t.job_status("routed-gpu-001").status == "failed"
        assert metric(w1, "guestkit_worker_dead_lettered_total", reason="not_for_this_pool") == 1
        assert t.job_status("pinned-w2-0001").status in ("pending", "running")  # w1 keeps giving it back
        fleet.start("route-w2")
        assert t.wait_result("pinned-w2-0001", 60)["status"] == "completed"
        assert [(j, a) for j, a, _ in read_runs(journal)] == [("pinned-w2-0001", 1)]
        assert len(redis_server.client().xrange(k.dead)) == 1
    finally:
        fleet.stop_all()


def test_two_producers_racing_on_one_job_id(tmp_path, redis_server, pool):
    journal = tmp_path / "journal"
    docs = [journal_job("raced-job-0001", journal),
            journal_job("raced-job-0001", journal, data={"tag": "other"})]
    files = []
    for i, doc in enumerate(docs * 2):
        path = tmp_path / f"job{i}.json"
        path.write_text(json.dumps(doc))
        files.append(path)
    argv = [sys.executable, "-m", "guestkit_worker", "submit", "--transport", "redis", "--redis-url",
            redis_server.url, "--pool", pool]
    env = plugin_env(tmp_path)  # submit judges the job as a worker with the journal handler would
    procs = [subprocess.Popen([*argv, str(f)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for f in files]
    outs = [(p.wait(60), *p.communicate(timeout=60)) for p in procs]
    # one created; its twin is the same document again, no error; both copies of the other
    # document are refused
    assert sum("(already submitted)" in out for rc, out, _ in outs if rc == 0) == 1, outs
    assert sorted(rc for rc, _, _ in outs) == [0, 0, 1, 1], outs
    assert all("already used by another job" in err for rc, _, err in outs if rc), outs
    fleet = Fleet(tmp_path, redis_server, pool)
    try:
        fleet.start("race-w1")
        t = producer(redis_server, pool)
        assert t.wait_result("raced-job-0001", 60)["status"] == "completed"
        # a plain XADD of the same job id is a duplicate: dead-lettered, never run
        from guestkit_worker.transports.redis import Keys
        redis_server.cli("XADD", Keys(pool).jobs, "*", "job", json.dumps(docs[0]))
        wait_for(lambda: redis_server.client().xrange(Keys(pool).dead), timeout=30,
                 what="the duplicate's dead letter")
        assert [r[0] for r in read_runs(journal)] == ["raced-job-0001"]
        info = group_info(redis_server, pool)
        assert info["group"]["pending"] == 0 and info["xlen"] == 0
        assert info["dead"][0][1][b"reason"] == b"duplicate_job_id"
    finally:
        fleet.stop_all()


def test_status_result_list_cancel_on_redis_locally_and_through_the_api(tmp_path, redis_server, pool):
    """The client commands on --transport redis (no --api), and the REST API of a worker on
    Redis: the same answers from the same keys."""
    import re

    from apikit import call
    journal = tmp_path / "journal"
    env = plugin_env(tmp_path)
    base = [sys.executable, "-m", "guestkit_worker"]
    where = ["--transport", "redis", "--redis-url", redis_server.url, "--pool", pool]

    def cmd(*args):
        p = subprocess.run([*base, *args, *where], env=env, capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr
    fleet = Fleet(tmp_path, redis_server, pool, threads=1)
    try:
        w = fleet.start("client-w1", "--api-addr", "127.0.0.1:0")
        api = wait_for(lambda: (lambda m: m.group(1) if m else None)(
            re.search(r"serving the REST API on (\S+)", w.log())), timeout=30, what="the API's address")
        t = producer(redis_server, pool)
        t.submit(journal_job("client-long-01", journal, seconds=60))
        wait_for(lambda: read_runs(journal), timeout=30, what="the long job to start")
        reply = call(api, "POST", "/api/v1/jobs", doc=journal_job("client-wait-01", journal))
        assert reply.status in (200, 201, 202), reply
        reply = call(api, "POST", "/api/v1/jobs", doc=journal_job("client-wait-01", journal))
        assert reply.status in (200, 409)
        rc, out, err = cmd("status", "client-long-01")
        assert (rc == 0 and json.loads(out)["status"] == "running"
                and json.loads(out)["worker_id"] == "client-w1"), err
        assert call(api, "GET", "/api/v1/jobs/client-wait-01").json["data"]["status"] == "pending"
        rc, out, err = cmd("list")
        assert rc == 0 and "client-long-01" in out and "client-wait-01" in out, err
        rc, out, err = cmd("cancel", "client-wait-01")  # waiting: it never runs
        assert rc == 0, (out, err)
        rc, out, err = cmd("result", "client-wait-01")
        assert json.loads(out)["status"] == "cancelled" and rc == 1, (out, err)
        reply = call(api, "DELETE", "/api/v1/jobs/client-long-01")  # running and cancellable: stopped
        assert reply.status in (200, 202), reply
        assert t.wait_result("client-long-01", 60)["status"] == "cancelled"
        assert call(api, "GET", "/api/v1/jobs/client-long-01/result").json["data"]["status"] == "cancelled"
        assert [r[0] for r in read_runs(journal)] == ["client-long-01"]  # the cancelled waiting job never ran
        info = group_info(redis_server, pool)
        assert info["group"]["pending"] == 0 and info["xlen"] == 0
    finally:
        fleet.stop_all()
