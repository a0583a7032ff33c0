"""The Redis Streams transport against a real redis-server (tests/redisfixture.py): submission
without duplicates, delivery without prefetch, fenced leases, reclaim, retries, dead letters,
idempotency keys, status/list/cancel, and Redis going away and coming back."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, make_job, wait_for
from redisfixture import RedisServer, require_redis_py, start_redis

from guestkit_worker.job.errors import ConfigError, JobFileError
from guestkit_worker.job.outcomes import cancelled_before_start
from guestkit_worker.transports.base import LeaseLost, Outcome, TransportUnavailable
from guestkit_worker.transports.redis import GROUP, Keys, RedisTransport


@pytest.fixture(autouse=True)
def _redis_py():
    require_redis_py()


class Recorder:
    """Stands in for WorkerMetrics: counts what the transport reports."""

    def __init__(self):
        self.counts = {}

    def _add(self, key, n=1):
        self.counts[key] = self.counts.get(key, 0) + n

    def jobs_reclaimed(self, n=1):
        self._add("reclaimed", n)

    def lease_lost(self):
        self._add("lease_lost")

    def dead_lettered(self, reason):
        self._add(("dead", reason))

    def transport_error(self, operation):
        self._add(("error", operation))

    def set_queue_oldest_age(self, seconds):
        self.counts["oldest"] = seconds


@pytest.fixture
def make(redis_url, pool):
    made = []

    def _make(worker_id="w1", url=None, **kw):
        kw.setdefault("metrics", Recorder())
        t = RedisTransport(url or redis_url, worker_id, pool=pool, **kw)
        t.open()
        made.append(t)
        return t
    _make.made = made
    yield _make
    for t in made:
        t.close()


def completed(t, d, data=None, key=None):
    result = {"job_id": d.job_id, "status": "completed", "completed_at": "2026-12-01T00:00:00Z",
              "worker_id": t.worker_id, "execution_summary": {"attempt": d.attempt}, "error": None,
              "data": data}
    o = Outcome(d, "completed", result=result, idempotency_key=key)
    t.commit([o])
    return o


@pytest.mark.integration
def test_submit_never_creates_two_jobs_for_one_id(make, redis_server, pool):
    make()  # an open worker: the stream and its consumer group exist before the producers race
    doc = make_job("race-job-0001")
    other = make_job("race-job-0001", data={"x": 1})
    receipts, barrier = [], threading.Barrier(8)

    def producer(d):
        p = RedisTransport(redis_server.url, "producer", pool=pool)  # a producer needs no open()
        barrier.wait(10)
        receipts.append((d is doc, p.submit(d).outcome))
        p.close()
    threads = [threading.Thread(target=producer, args=(doc if i % 2 else other,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    (winner,) = [is_doc for is_doc, outcome in receipts if outcome == "created"]
    # the other three with the winning document: exists; the four with the other one: conflict
    assert sorted(o for is_doc, o in receipts if is_doc == winner) == ["created"] + ["exists"] * 3, receipts
    assert [o for is_doc, o in receipts if is_doc != winner] == ["conflict"] * 4, receipts
    assert redis_server.client().xlen(Keys(pool).jobs) == 1


@pytest.mark.integration
def test_fetch_takes_only_what_was_asked_and_commit_stores_acks_and_deletes(make, redis_server, pool):
    t = make(result_ttl=3600)
    for i in range(5):
        t.submit(make_job(f"fetch-job-{i:04d}"))
    got = t.fetch(2, 0.1)
    assert [d.job_id for d in got] == ["fetch-job-0000", "fetch-job-0001"]
    r, k = redis_server.client(), Keys(pool)
    third = r.xrange(k.jobs, count=3)[2][0].decode()
    assert t.depth() == 3  # no prefetch beyond the free threads
    # the oldest waiting entry's age, by the server's clock
    sec, usec = r.time()
    assert 0 <= t.metrics.counts["oldest"] <= sec + usec / 1e6 - int(third.split("-")[0]) / 1000 + 0.001
    t.mark_started(got[0])
    assert t.job_status("fetch-job-0000").status == "running"
    completed(t, got[0], data={"n": 0})
    assert got[0] and t.get_result("fetch-job-0000")["data"] == {"n": 0}
    assert 3500 < r.ttl(k.result("fetch-job-0000")) <= 3600
    st = t.job_status("fetch-job-0000")
    assert (st.status, st.worker_id, st.attempt) == ("completed", "w1", 1)
    assert r.xpending(k.jobs, GROUP)["pending"] == 1  # the other one is still held
    assert r.xlen(k.jobs) == 4  # acknowledged and deleted
    completed(t, got[1])
    rest = t.fetch(10, 0.1)
    assert len(rest) == 3
    for d in rest:
        completed(t, d)
    assert r.xlen(k.jobs) == 0 and r.xpending(k.jobs, GROUP)["pending"] == 0 and t.depth() == 0
    assert t.metrics.counts["oldest"] == 0


@pytest.mark.integration
def test_poison_entries_go_to_the_dead_letters(make, redis_server, pool):
    t = make(max_job_bytes=1000)
    k = Keys(pool)
    redis_server.cli("XADD", k.jobs, "*", "job", "this is not json")
    redis_server.cli("XADD", k.jobs, "*", "job", json.dumps({"hello": "no job id"}))
    redis_server.cli("XADD", k.jobs, "*", "job",
                     json.dumps(make_job("big-job-0001", data={"pad": "x" * 2000})))
    redis_server.cli("XADD", k.jobs, "*", "payload", "no job field")
    redis_server.cli("XADD", k.jobs, "*", "job", json.dumps(make_job("good-job-0001")))
    got = t.fetch(10, 0.1)
    assert [d.job_id for d in got] == [None, None, None, None, "good-job-0001"]
    for d in got[2:4]:  # over --max-job-size, no job field: refused unread
        with pytest.raises(JobFileError):
            t.read(d)
    assert t.read(got[0]) == b"this is not json"  # the worker's decoder names the problem
    outcomes = [Outcome(d, "rejected", reason={"error": {"message": "bad"}}, failed=True) for d in got[:4]]
    t.commit(outcomes)
    assert [o.error for o in outcomes] == [None] * 4
    r = redis_server.client()
    dead = [{a.decode(): b.decode() for a, b in f.items()} for _, f in r.xrange(k.dead)]
    assert [d["reason"] for d in dead] == ["not_json", "no_job_id", "too_large", "no_job_field"]
    assert dead[0]["job"] == "this is not json" and dead[0]["worker"] == "w1"
    assert "invalid JSON" in dead[0]["detail"]
    assert r.xpending(k.jobs, GROUP)["pending"] == 1 and r.xlen(k.jobs) == 1
    assert t.metrics.counts[("dead", "not_json")] == 1 and t.metrics.counts[("dead", "too_large")] == 1
    assert t.fetch(10, 0.1) == []


@pytest.mark.integration
def test_poison_taken_over_from_a_dead_worker_goes_straight_to_the_dead_letters(make, redis_server, pool):
    a = make("worker-a", lease_seconds=1)
    b = make("worker-b", lease_seconds=1)
    redis_server.cli("XADD", Keys(pool).jobs, "*", "job", "{not json")
    assert len(a.fetch(1, 0.1)) == 1  # and a dies before rejecting it
    wait_for(lambda: b.metrics.counts.get(("dead", "not_json")) or b.reclaim(
        lambda d, w: pytest.fail("poison handed over"), 2), timeout=10, what="the dead letter")
    assert redis_server.client().xpending(Keys(pool).jobs, GROUP)["pending"] == 0


@pytest.mark.integration
def test_a_plain_xadd_of_a_known_job_id_is_a_dead_lettered_duplicate(make, redis_server, pool):
    t = make()
    k = Keys(pool)
    doc = make_job("dup-job-00001")
    assert t.submit(doc).outcome == "created"
    redis_server.cli("XADD", k.jobs, "*", "job", json.dumps(doc))
    got = t.fetch(10, 0.1)
    assert [d.job_id for d in got] == ["dup-job-00001"]
    dead = redis_server.client().xrange(k.dead)
    assert len(dead) == 1 and dead[0][1][b"reason"] == b"duplicate_job_id"
    assert t.metrics.counts[("dead", "duplicate_job_id")] == 1


@pytest.mark.integration
def test_release_acts_on_the_workers_routing_verdict_not_on_the_document(make, redis_server, pool):
    """The transport never reads a job's routing: released as not_for_me alone, a job whose
    document routes it to another pool is queued again (the worker found it pinned to another
    worker of this pool, say); with the worker's verdict other_pool it is a dead letter
    not_for_this_pool, the job failed with the transport's own DEAD_LETTERED record."""
    t = make()
    k = Keys(pool)
    assert t.submit(make_job("routed-away-01", routing={"worker_pool": "gpu"})).outcome == "created"
    [d] = t.fetch(1, 0.1)
    t.release(d, not_for_me=True)
    assert redis_server.client().xrange(k.dead) == [] and t.depth() == 1
    [d] = t.fetch(1, 0.1)
    t.release(d, not_for_me=True, other_pool=True)
    dead = redis_server.client().xrange(k.dead)
    assert [f[b"reason"] for _, f in dead] == [b"not_for_this_pool"]
    assert t.metrics.counts[("dead", "not_for_this_pool")] == 1 and t.depth() == 0
    st = t.job_status("routed-away-01")
    assert st.status == "failed" and st.error["code"] == "DEAD_LETTERED"


@pytest.mark.integration
def test_a_lost_lease_fences_renewal_and_outcome(make, redis_server, pool):
    a = make("worker-a", lease_seconds=1)
    b = make("worker-b", lease_seconds=1)
    a.submit(make_job("lease-job-0001"))
    (da,) = a.fetch(1, 0.1)
    a.mark_started(da)
    taken = []

    def decide(d, dead):
        taken.append((d.job_id, d.started, dead, d.delivery_count))
        b.mark_started(d)
        completed(b, d, data={"by": "b"})
    wait_for(lambda: b.reclaim(decide, 2), timeout=10, what="worker-b to take over the idle entry")
    assert taken == [("lease-job-0001", True, "worker-a", 2)]
    assert a.extend_lease(da) is False
    o = completed(a, da, data={"by": "a"})
    assert isinstance(o.error, LeaseLost)
    assert b.get_result("lease-job-0001")["data"] == {"by": "b"}
    assert a.metrics.counts["lease_lost"] >= 1 and b.metrics.counts["reclaimed"] == 1
    assert redis_server.client().xpending(Keys(pool).jobs, GROUP)["pending"] == 0


@pytest.mark.integration
def test_renewed_lease_is_never_taken_over(make, pool):
    a = make("worker-a", lease_seconds=1)
    b = make("worker-b", lease_seconds=1)
    a.submit(make_job("long-job-0001"))
    (da,) = a.fetch(1, 0.1)
    a.mark_started(da)
    end = time.monotonic() + 3.0  # three leases
    while time.monotonic() < end:
        assert a.extend_lease(da)
        assert b.reclaim(lambda d, w: pytest.fail("a renewed lease was taken over"), 2) == 0
        time.sleep(0.25)
    completed(a, da)
    assert a.get_result("long-job-0001")["worker_id"] == "worker-a"


@pytest.mark.integration
def test_retry_requeues_the_rewritten_document_atomically(make, redis_server, pool):
    t = make()
    doc = make_job("retry-job-0001", execution={"max_attempts": 3})
    t.submit(doc)
    (d,) = t.fetch(1, 0.1)
    t.mark_started(d)
    doc2 = dict(doc, execution={"max_attempts": 3, "attempt": 2})
    t.retry(d, doc2)
    st = t.job_status("retry-job-0001")
    assert (st.status, st.attempt, st.worker_id) == ("pending", 2, None)
    (d2,) = t.fetch(1, 0.1)
    assert d2.attempt == 2 and d2.name != d.name and json.loads(t.read(d2)) == doc2
    assert redis_server.client().xlen(Keys(pool).jobs) == 1


@pytest.mark.integration
def test_entries_delivered_too_often_are_dead_lettered(make, redis_server, pool):
    a = make("worker-a", lease_seconds=1, max_deliveries=2)
    b = make("worker-b", lease_seconds=1, max_deliveries=2)
    c = make("worker-c", lease_seconds=1, max_deliveries=2)
    a.submit(make_job("crashy-job-001"))
    assert len(a.fetch(1, 0.1)) == 1                     # delivery 1; a "dies"
    wait_for(lambda: b.reclaim(lambda d, w: None, 1), timeout=10, what="delivery 2")  # b "dies" too
    wait_for(lambda: c.metrics.counts.get(("dead", "max_deliveries")) or c.reclaim(
        lambda d, w: pytest.fail("delivered a third time"), 1), timeout=10, what="the dead letter")
    k = Keys(pool)
    r = redis_server.client()
    (entry,) = r.xrange(k.dead)
    assert entry[1][b"reason"] == b"max_deliveries" and b"delivered 3 times" in entry[1][b"detail"]
    assert r.xpending(k.jobs, GROUP)["pending"] == 0 and r.xlen(k.jobs) == 0
    st = c.job_status("crashy-job-001")
    assert st.status == "failed" and st.error["code"] == "DEAD_LETTERED"


@pytest.mark.integration
def test_a_worker_id_in_use_by_a_live_worker_is_refused(make, redis_url, pool):
    make("twin-id", lease_seconds=1)
    twin = RedisTransport(redis_url, "twin-id", pool=pool, lease_seconds=1)
    stop = threading.Event()

    def keep_alive(t):  # the first worker lives on: it refreshes its key as it fetches
        while not stop.wait(0.2):
            t.link.alive(force=True)
    live = threading.Thread(target=keep_alive, args=(make.made[-1],))
    live.start()
    try:
        with pytest.raises(ConfigError) as err:
            twin.open()
        assert "in use by a live worker" in str(err.value)
    finally:
        stop.set()
        live.join(10)


@pytest.mark.integration
def test_a_restarted_worker_first_takes_back_its_own_entries(make, redis_url, pool):
    old = make("fixed-id")
    old.submit(make_job("own-job-00001"))
    old.submit(make_job("own-job-00002"))
    d1, d2 = old.fetch(2, 0.1)
    old.mark_started(d1)
    old.link.alive_at = float("inf")  # the old process is gone: its liveness key expires
    old.link.r.delete(old.k.alive("fixed-id"))  # (now rather than a lease later)
    new = RedisTransport(redis_url, "fixed-id", pool=pool)  # same worker id, a new process
    new.open()
    try:
        seen = []

        def decide(d, dead):
            seen.append((d.job_id, d.started, dead))
            new.release(d)
        assert new.reclaim(decide, 4) == 2  # no lease to wait for: they were its own
        # both count as started: fetch records the start of what it delivers (starts_on_fetch)
        assert sorted(seen) == [("own-job-00001", True, "fixed-id"), ("own-job-00002", True, "fixed-id")]
        assert {d.job_id for d in new.fetch(4, 0.1)} == {"own-job-00001", "own-job-00002"}
    finally:
        new.close()


@pytest.mark.integration
def test_idempotency_keys_reserve_complete_and_release(make):
    t = make()
    for i in (1, 2):
        t.submit(make_job(f"idem-job-000{i}"))
    d1, d2 = t.fetch(2, 0.1)
    assert t.reserve_idempotency_key("key-1", "idem-job-0001").won
    r = t.reserve_idempotency_key("key-1", "idem-job-0002")
    assert (r.won, r.state, r.holder_job_id) == (False, "running", "idem-job-0001")
    t.release_idempotency_key("key-1", "idem-job-0002")  # not the holder: nothing happens
    assert not t.reserve_idempotency_key("key-1", "idem-job-0002").won
    t.mark_started(d1)
    completed(t, d1, data={"v": 1}, key="key-1")
    r = t.reserve_idempotency_key("key-1", "idem-job-0002")
    assert (r.won, r.state, r.holder_job_id, r.result["data"]) == (
        False, "completed", "idem-job-0001", {"v": 1})
    assert t.reserve_idempotency_key("key-2", "idem-job-0002").won
    t.release_idempotency_key("key-2", "idem-job-0002")
    assert t.reserve_idempotency_key("key-2", "idem-job-0001").won


@pytest.mark.integration
def test_a_reservation_of_a_dead_worker_is_taken_over_a_lease_later(make, redis_server, pool):
    a = make("worker-a", lease_seconds=1)
    b = make("worker-b", lease_seconds=1)
    assert a.reserve_idempotency_key("key-x", "holder-job-001").won
    assert not b.reserve_idempotency_key("key-x", "second-job-001").won  # a is alive
    a.link.alive_at = float("inf")  # a dies: its liveness key is no longer refreshed
    wait_for(lambda: b.reserve_idempotency_key("key-x", "second-job-001").won, timeout=10,
             what="the reservation to be taken over")
    assert redis_server.client().hget(Keys(pool).idem("key-x"), "job_id") == b"second-job-001"


@pytest.mark.integration
def test_cancel_status_and_list(make, redis_server, pool):
    t = make()
    t.submit(make_job("cancel-wait-01"))
    t.submit(make_job("cancel-run-001"))
    t.submit(make_job("no-cancel-001", execution={"cancellable": False}))
    # still waiting: deleted from the stream
    assert t.cancel("cancel-wait-01", cancelled_before_start) == "cancelled"
    assert t.get_result("cancel-wait-01")["error"]["code"] == "CANCELLED"
    assert t.depth() == 2  # the group's lag is null after the deletion: length minus pending
    running = t.fetch(5, 0.1)
    assert [d.job_id for d in running] == ["cancel-run-001", "no-cancel-001"]
    for d in running:
        t.mark_started(d)
    assert t.cancel("cancel-run-001", cancelled_before_start) == "cancelling"
    assert t.cancel("no-cancel-001", cancelled_before_start) == "not_cancellable"
    assert t.cancel_requests(["cancel-run-001", "no-cancel-001"]) == {"cancel-run-001"}
    assert t.cancel("cancel-wait-01", cancelled_before_start) == "finished"
    assert t.cancel("never-was-0001", cancelled_before_start) == "not_found"
    assert t.job_status("never-was-0001") is None
    st = t.job_status("cancel-run-001")
    assert (st.status, st.worker_id, st.cancellable) == ("running", "w1", True)
    assert t.job_status("cancel-wait-01").status == "cancelled"


@pytest.mark.integration
def test_list_jobs_pages_newest_first_and_filters(make):
    t = make()
    ids = [f"list-job-{i:04d}" for i in range(25)]
    for job_id in ids:
        t.submit(make_job(job_id, operation="system.echo" if int(job_id[-2:]) % 2 else "test.sleep"))
    seen, token = [], None
    for _ in range(5):
        page = t.list_jobs(limit=10, page_token=token)
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if token is None:
            break
    assert sorted(seen) == ids and len(seen) == 25
    first = t.list_jobs(limit=25).jobs
    assert [j.submitted_at for j in first] == sorted((j.submitted_at for j in first), reverse=True)
    echo = t.list_jobs(operation="system.echo", limit=100).jobs
    assert sorted(j.job_id for j in echo) == [j for j in ids if int(j[-2:]) % 2]
    assert t.list_jobs(status="completed").jobs == []


@pytest.mark.integration
def test_maintain_drops_expired_jobs_from_the_index_and_consumers_long_gone(make, redis_server, pool):
    t = make("maint-w1", result_ttl=1)
    gone = make("maint-gone")
    busy = make("maint-busy")
    t.submit(make_job("short-lived-01"))
    (d,) = t.fetch(1, 0.1)
    completed(t, d)
    busy.submit(make_job("still-held-01"))
    assert len(busy.fetch(1, 0.1)) == 1  # busy holds an entry: its consumer stays whatever its idle time
    k = Keys(pool)
    r = redis_server.client()
    wait_for(lambda: not r.exists(k.job("short-lived-01")), timeout=10, what="the job's state to expire")
    assert r.zscore(k.index, "short-lived-01") is not None
    t.link.stale_consumer_seconds = 0.5
    time.sleep(0.6)  # the consumers' idle time must exceed it (this is the condition, not a wait for one)
    t.maintain()
    assert r.zscore(k.index, "short-lived-01") is None and t.list_jobs().jobs[0].job_id == "still-held-01"
    names = {c["name"].decode() for c in r.xinfo_consumers(k.jobs, GROUP)}
    assert "maint-gone" not in names and {"maint-w1", "maint-busy"} <= names
    assert gone.fetch(1, 0.1) == []  # a live worker whose consumer was removed just reads on


@pytest.mark.integration
def test_progress_events(make):
    t = make()
    t.append_progress("prog-job-0001", {"step": 1})
    t.append_progress("prog-job-0001", {"step": 2})
    assert t.read_progress("prog-job-0001") == [{"step": 1}, {"step": 2}]
    assert t.read_progress("prog-job-0001", after=1) == [{"step": 2}]


@pytest.mark.integration
def test_redis_down_then_restarted_loses_nothing(tmp_path, pool):
    server = start_redis(tmp_path / "redis")
    try:
        t = RedisTransport(server.url, "w1", pool=pool, metrics=Recorder(), lease_seconds=30)
        t.open()
        for i in (1, 2):
            t.submit(make_job(f"outage-job-00{i}"))
        d1, d2 = t.fetch(2, 0.1)
        t.mark_started(d1)
        t.mark_started(d2)
        assert t.health()["transport"][0] is True
        server.kill()
        ok, detail = t.health()["transport"]
        assert ok is False and "unreachable" in detail
        assert t.extend_lease(d1) is True  # within the lease the run goes on
        with pytest.raises(TransportUnavailable):
            t.fetch(1, 0.1)
        # an outcome stored while Redis is away: tried again with a pause until it is back
        box = {}
        committer = threading.Thread(target=lambda: box.setdefault("o", completed(t, d1)))
        committer.start()
        wait_for(lambda: t.metrics.counts.get(("error", "commit"), 0) >= 2, timeout=30, what="commit retries")
        server.restart()  # the append-only file still holds both pending entries
        committer.join(60)
        assert box["o"].error is None and t.get_result("outage-job-001")["status"] == "completed"
        # past a lease of trying, the outcome comes back with the error (the worker decides)
        t.link.lease_seconds = 1
        server.kill()
        o = completed(t, d2)
        assert isinstance(o.error, TransportUnavailable) and isinstance(o.error, OSError)
        server.restart()
        wait_for(lambda: t.health()["transport"][0], timeout=20, what="redis back")
        o = completed(t, d2)  # the same outcome, committed again
        assert o.error is None and t.get_result("outage-job-002")["status"] == "completed"
        assert t.depth() == 0 and t.fetch(1, 0.1) == []
        t.close()
    finally:
        server.stop()


@pytest.mark.integration
def test_an_entry_dropped_after_a_failed_give_back_is_reclaimed_by_its_own_live_worker(tmp_path, pool):
    """The fleet's Redis-restart case, step by step: a job thread cannot give its entry back
    (Redis away), so the worker drops it from its hold.  After the restart the
    entry is still pending under this live worker; the lease keeper's renewals must not keep it
    fresh, and the worker's own reclaim (every lease/2) takes it back."""
    server = start_redis(tmp_path / "redis")
    try:
        t = RedisTransport(server.url, "w1", pool=pool, metrics=Recorder(), lease_seconds=1)
        t.open()
        t.submit(make_job("dropped-job-001"))
        (d,) = t.fetch(1, 0.1)
        server.kill()
        t.mark_started(d)  # recorded by the take script that delivered it: nothing to send
        assert d.started
        with pytest.raises(TransportUnavailable):
            t.release(d)
        server.restart()  # the append-only file still holds the pending entry
        wait_for(lambda: t.health()["transport"][0], timeout=20, what="redis back")
        pending = server.client().xpending(Keys(pool).jobs, GROUP)
        assert pending["consumers"] == [{"name": b"w1", "pending": 1}]
        taken = []

        def keeper_and_recovery():  # what the lease keeper and the main loop do meanwhile
            assert t.extend_lease(d) is False  # never renewed once dropped
            return t.reclaim(lambda r, w: (taken.append((r.name, r.job_id, w)), t.release(r)), 10)
        wait_for(keeper_and_recovery, timeout=20, interval=0.25, what="the dropped entry taken back")
        assert taken == [(d.name, "dropped-job-001", "w1")]
        (again,) = t.fetch(1, 0.1)  # given back as a new entry, and runs
        assert again.job_id == "dropped-job-001"
        t.mark_started(again)
        completed(t, again)
        assert t.get_result("dropped-job-001")["status"] == "completed"
        assert server.client().xpending(Keys(pool).jobs, GROUP)["pending"] == 0
        t.close()
    finally:
        server.stop()


@pytest.mark.integration
def test_a_job_rejected_without_a_result_goes_back_to_the_queue(make, redis_server, pool):
    """What the worker does with a delivery of a job id it is running already: rejected with
    no result.  On Redis that entry is queued again (the job is not lost), its state untouched."""
    t = make()
    t.submit(make_job("twice-here-001"))
    (d,) = t.fetch(1, 0.1)
    o = Outcome(d, "rejected", reason={"error": {"code": "DUPLICATE_JOB_ID", "message": "already running"}},
                failed=True)
    t.commit([o])
    assert o.error is None and redis_server.client().xlen(Keys(pool).dead) == 0
    assert t.job_status("twice-here-001").status == "pending"
    (d2,) = t.fetch(1, 0.1)
    assert d2.job_id == "twice-here-001" and d2.name != d.name


@pytest.mark.integration
def test_a_start_after_the_lease_was_lost_stops_the_run(make):
    a = make("worker-a", lease_seconds=1)
    b = make("worker-b", lease_seconds=1)
    a.submit(make_job("late-start-001"))
    (da,) = a.fetch(1, 0.1)
    wait_for(lambda: b.reclaim(lambda d, w: b.mark_started(d), 1), timeout=10, what="the takeover")
    a.mark_started(da)  # too late: no exception, but the lease is gone
    assert a.extend_lease(da) is False and a.metrics.counts["lease_lost"] == 1
    assert a.job_status("late-start-001").worker_id == "worker-b"


@pytest.mark.integration
def test_a_commit_whose_reply_was_lost_is_recognised_when_tried_again(make):
    t = make()
    t.submit(make_job("lost-reply-001"))
    (d,) = t.fetch(1, 0.1)
    t.mark_started(d)
    o = completed(t, d)
    assert o.error is None
    t.held.hold(d)  # as if the first reply never arrived
    again = completed(t, d)
    assert again.error is None and t.metrics.counts.get("lease_lost") is None


@pytest.mark.integration
def test_open_waits_for_a_redis_that_is_not_up_yet(tmp_path, pool):
    server = RedisServer(tmp_path / "redis")  # its port chosen, not started
    t = RedisTransport(server.url, "early-bird", pool=pool)
    opened = threading.Thread(target=t.open)
    opened.start()
    try:
        time.sleep(1)  # open() is retrying meanwhile (not a synchronisation: any moment would do)
        assert opened.is_alive()
        server.start()
        opened.join(30)
        assert not opened.is_alive()
        assert t.submit(make_job("early-job-001")).outcome == "created" and len(t.fetch(1, 0.1)) == 1
        t.close()
    finally:
        server.stop()


@pytest.mark.integration
def test_password_from_file_or_url_never_shown(tmp_path, pool):
    secret = "s3cret-Pa55"
    server = start_redis(tmp_path / "redis", extra_args=["--requirepass", secret])
    try:
        pw = tmp_path / "pw"
        pw.write_text(secret + "\n")
        t = RedisTransport(server.url, "w1", pool=pool, password_file=str(pw))
        t.open()
        assert t.submit(make_job("auth-job-0001")).outcome == "created"
        assert secret not in t.describe() and t.health()["transport"][0]
        t.close()
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        t2 = RedisTransport(url, "w2", pool=pool)
        t2.open()
        assert t2.job_status("auth-job-0001").status == "pending"
        assert secret not in t2.describe() and secret not in str(t2.health())
        t2.close()
        wrong = tmp_path / "wrong"
        wrong.write_text("nope\n")
        with pytest.raises(ConfigError) as err:
            RedisTransport(server.url, "w3", pool=pool, password_file=str(wrong)).open()
        assert "authentication failed" in str(err.value) and secret not in str(err.value)
        with pytest.raises(ConfigError) as err:
            RedisTransport(server.url, "w3", pool=pool, password_file=str(tmp_path / "missing")).open()
        assert "missing" in str(err.value)
    finally:
        server.stop()


@pytest.mark.integration
def test_without_the_redis_package_a_clear_error_names_the_extra():
    code = ("import sys; sys.modules['redis'] = None\n"
            "from guestkit_worker.transports.redis import RedisTransport\n"
            "try:\n    RedisTransport('redis://127.0.0.1:6379/0', 'w')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert "ConfigError" in p.stdout and "guestkit-worker[redis]" in p.stdout, p.stdout + p.stderr


def test_bad_urls_and_settings_are_config_errors():
    for url in ("http://x/", "redis://", "unix://", "", "redis://:pw@"):
        with pytest.raises(ConfigError) as err:
            RedisTransport(url, "w")
        assert "pw" not in str(err.value) or ":***@" in str(err.value)
    # redis-py also takes the password from the query: it never shows in a message either
    for url in ("http://x/?db=1&password=s3cret", "redis://?PASSWORD=s3cret", "unix://?password=s3cret#x",
                "ftp://u:s3cret@h/?password=s3cret"):
        with pytest.raises(ConfigError) as err:
            RedisTransport(url, "w")
        assert "s3cret" not in str(err.value) and "***" in str(err.value), str(err.value)
    with pytest.raises(ConfigError):
        RedisTransport("redis://127.0.0.1/0", "w", pool="a{b}")
    with pytest.raises(ConfigError):
        RedisTransport("redis://127.0.0.1/0", "w", lease_seconds=0)


def _script_calls(r):
    stats = r.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("script|exists", "evalsha")}


@pytest.mark.integration
def test_batched_scripts_skip_script_exists_and_survive_a_flushed_script_cache(make, redis_server, pool):
    """Admit and commit go as plain EVALSHA in one pipeline: no SCRIPT EXISTS round trip before
    them; after SCRIPT FLUSH (a restarted server) the NOSCRIPT calls are made again, nothing lost."""
    t = make()
    r, k = redis_server.client(), Keys(pool)
    for i in range(6):
        t.submit(make_job(f"sha-job-{i:04d}"))
    for _round in range(2):  # the first round loads the scripts
        before = _script_calls(r)
        got = t.fetch(2, 0.1)
        for d in got:
            t.mark_started(d)
        t.commit([Outcome(d, "completed", result={"job_id": d.job_id, "status": "completed", "data": None})
                  for d in got])
        after = _script_calls(r)
    assert after["script|exists"] == before["script|exists"]
    # one take (both entries read, admitted and started in one step; mark_started sends
    # nothing), then the two commits in one pipeline
    assert after["evalsha"] - before["evalsha"] == 3
    r.script_flush()
    got = t.fetch(2, 0.1)  # take answered NOSCRIPT, then loaded and run
    assert [d.job_id for d in got] == ["sha-job-0004", "sha-job-0005"]
    for d in got:
        t.mark_started(d)
    r.script_flush()
    t.commit([Outcome(d, "completed", result={"job_id": d.job_id, "status": "completed", "data": None})
              for d in got])
    for i in range(6):
        assert t.job_status(f"sha-job-{i:04d}").status == "completed"
        assert t.get_result(f"sha-job-{i:04d}")["job_id"] == f"sha-job-{i:04d}"
    assert r.xlen(k.jobs) == 0 and r.xpending(k.jobs, GROUP)["pending"] == 0
    assert "error" not in str(t.metrics.counts)


@pytest.mark.integration
def test_admit_says_whether_a_result_is_stored_under_the_job_id(make, redis_server, pool):
    """The admit script tells the worker, in the same step, that no result is stored yet (the
    worker then skips its own look); a job given back with a shutdown's result stored is
    delivered again marked as having one, so the worker reads and judges it."""
    t = make()
    t.submit(make_job("result-look-001"))
    (d,) = t.fetch(1, 0.1)
    assert d.no_result_yet is True
    t.mark_started(d)
    cancelled = {"job_id": d.job_id, "status": "cancelled", "completed_at": "2026-12-01T00:00:00Z",
                 "worker_id": t.worker_id, "execution_summary": {"attempt": 1},
                 "error": {"code": "CANCELLED", "retry_recommended": True}}
    t.commit([Outcome(d, "cancelled", result=cancelled, release=True)])
    assert t.get_result("result-look-001")["status"] == "cancelled"
    (d2,) = t.fetch(1, 0.1)
    assert d2.job_id == "result-look-001" and d2.name != d.name
    assert d2.no_result_yet is False
    # a delivery with a result stored is not started by the take: the worker judges it first
    assert d2.started is False and t.job_status("result-look-001").status == "pending"
    redis_server.client().delete(Keys(pool).result("result-look-001"))
    t.release(d2)
    (d3,) = t.fetch(1, 0.1)
    assert d3.no_result_yet is True
    assert d3.started is True and t.job_status("result-look-001").status == "running"


@pytest.mark.integration
def test_take_reads_admits_and_starts_in_one_step_and_admits_foreign_entries_fully(make, redis_server, pool):
    """fetch(): the take script starts an entry its job hash names (the job_id field written by
    submit is only a hint); an entry XADDed by another producer, or one whose job_id field
    names another job, is admitted by the admit script under the id in its document, and
    started too; nothing is dead-lettered by a wrong hint."""
    t = make()
    r, k = redis_server.client(), Keys(pool)
    t.submit(make_job("take-own-0001"))
    own_entry = r.xrange(k.jobs)[-1]
    assert own_entry[1][b"job_id"] == b"take-own-0001"  # the hint submit writes
    plain = r.xadd(k.jobs, {"job": json.dumps(make_job("take-plain-001"))})
    forged = r.xadd(k.jobs, {"job": json.dumps(make_job("take-forged-01")), "job_id": "take-own-0001"})
    got = {d.job_id: d for d in t.fetch(3, 0.1)}
    assert set(got) == {"take-own-0001", "take-plain-001", "take-forged-01"}
    assert got["take-plain-001"].name == plain.decode() and got["take-forged-01"].name == forged.decode()
    for job_id, d in got.items():
        assert d.started and d.no_result_yet
        st = t.job_status(job_id)
        assert (st.status, st.worker_id) == ("running", t.worker_id)
        assert r.hget(k.running, d.name) == t.worker_id.encode()
    assert r.xlen(k.dead) == 0
    assert r.hget(k.job("take-own-0001"), "entry") == own_entry[0]  # the forged hint changed nothing
    for d in got.values():
        t.mark_started(d)  # nothing left to send
    completed_all = [Outcome(d, "completed", result={"job_id": d.job_id, "status": "completed", "data": None})
                     for d in got.values()]
    t.commit(completed_all)
    assert {t.job_status(j).status for j in got} == {"completed"}
    assert r.xlen(k.jobs) == 0 and r.xpending(k.jobs, GROUP)["pending"] == 0


class NotRedis:
    """A TCP listener on 127.0.0.1 (port 0) that answers each connection's first bytes with
    ``reply`` and closes it: an HTTP server, or a service speaking some other protocol."""

    def __init__(self, reply):
        import socket
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    conn.settimeout(5)
                    conn.recv(4096)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        self.thread.join(10)


@pytest.mark.integration
@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"\x00\x9c\xfe\x13 not a protocol anyone speaks \xff\r\n"],
                         ids=["http", "garbage"])
def test_a_redis_url_on_a_port_that_is_not_redis_is_one_line_naming_it(tmp_path, pool, reply):
    """run, api, submit and status with --redis-url on a port where something else answers: exit
    2 and one line naming --redis-url and the likely fix, no traceback (a worker would wait
    forever for a Redis that is not there, so it is a configuration error, not an outage)."""
    from conftest import cli
    server = NotRedis(reply)
    url = f"redis://127.0.0.1:{server.port}/0"
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("not-redis-0001")))
    where = ("--transport", "redis", "--redis-url", url, "--pool", pool)
    commands = {"run": ("run", "--once", "--metrics-enabled", "false", "--work-dir", str(tmp_path / "work")),
                "api": ("api", "--api-addr", "127.0.0.1:0", "--metrics-enabled", "false"),
                "submit": ("submit", str(job)),
                "status": ("status", "not-redis-0001")}
    try:
        for name, args in commands.items():
            p = cli(*args, *where, timeout=60)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and "Traceback" not in p.stderr, (name, p.returncode, p.stderr)
            assert f"--redis-url {url}: the server did not answer as Redis (Protocol Error: " in lines[-1], \
                (name, lines)
            assert lines[-1].endswith("); is that the Redis port?"), (name, lines)
    finally:
        server.close()


@pytest.mark.integration
def test_submit_queues_the_document_as_read_never_a_larger_form(redis_server, pool, tmp_path):
    """submit over Redis queues the job file's own bytes: a compact document of about 1 MB is
    not re-encoded with ', ' and ': ' (1.25 MB, over --max-job-size, dead-lettered unread)."""
    from conftest import cli
    from redisfixture import stored_result
    job = tmp_path / "wide.json"
    job.write_text(json.dumps(make_job("redis-wide-0001", data={"items": [[1]] * 249000}),
                              separators=(",", ":")))
    assert 990_000 < job.stat().st_size < 1 << 20
    common = ["--transport", "redis", "--redis-url", redis_server.url, "--pool", pool]
    cli("submit", str(job), *common, timeout=60, check=0)
    cli("run", "--once", *common, "--worker-id", f"{pool}-w", "--metrics-enabled", "false",
        "--work-dir", str(tmp_path / "work"), timeout=120, check=0)
    result = stored_result(redis_server.client(), pool, "redis-wide-0001")
    assert result is not None and result["status"] == "completed"
    assert redis_server.client().xlen(Keys(pool).dead) == 0


@pytest.mark.integration
def test_a_rejected_entry_never_overwrites_the_result_of_its_job_id(redis_server, pool, tmp_path):
    """An invalid document (an unknown top-level field) XADDed with the id of a job that has a
    result: dead-lettered duplicate_job_id when delivered; the stored result stays, byte for byte."""
    from conftest import cli
    k = Keys(pool)
    job = tmp_path / "first.json"
    job.write_text(json.dumps(make_job("redis-reuse-001", data={"n": 1})))
    common = ["--transport", "redis", "--redis-url", redis_server.url, "--pool", pool]
    once = ["run", "--once", *common, "--worker-id", f"{pool}-w", "--metrics-enabled", "false",
            "--work-dir", str(tmp_path / "work")]
    cli("submit", str(job), *common, timeout=60, check=0)
    cli(*once, timeout=120, check=0)
    client = redis_server.client()
    stored = client.get(k.result("redis-reuse-001"))
    assert json.loads(stored)["status"] == "completed"
    invalid = make_job("redis-reuse-001", data={"n": 2}, extra=1)
    redis_server.cli("XADD", k.jobs, "*", "job", json.dumps(invalid))
    cli(*once, timeout=120)
    assert client.get(k.result("redis-reuse-001")) == stored
    assert [e[1][b"reason"] for e in client.xrange(k.dead)] == [b"duplicate_job_id"]
