"""The submission's per-thread Redis connection (transports/redis/hotcall.py) against a real
redis-server: one connection serves a thread's submissions, and a flushed script cache or a
killed connection is answered like the registered script's call (loaded again, reconnected)."""

import threading

import pytest
from conftest import make_job
from redisfixture import require_redis_py

from guestkit_worker.transports.redis import Keys, RedisTransport


@pytest.fixture(autouse=True)
def _redis_py():
    require_redis_py()


def _received(client):
    return int(client.info("stats")["total_connections_received"])


def test_a_threads_submissions_share_one_connection(redis_server, pool):
    admin = redis_server.client()
    before = _received(admin)
    t = RedisTransport(redis_server.url, "producer", pool=pool)
    try:
        receipts = [t.submit(make_job(f"hot-job-{i:04d}")).outcome for i in range(30)]
        assert receipts == ["created"] * 30
        # the pool's connection loads the script once (NOSCRIPT on the first EVALSHA), the
        # thread's own connection carries the 30 calls: not one connection per call
        assert _received(admin) - before <= 3
        other = []
        th = threading.Thread(target=lambda: other.append(t.submit(make_job("hot-job-other")).outcome))
        th.start()
        th.join(30)
        assert other == ["created"]
    finally:
        t.close()
    assert admin.xlen(Keys(pool).jobs) == 31


def test_flushed_scripts_and_killed_connections_are_survived(redis_server, pool):
    admin = redis_server.client()
    t = RedisTransport(redis_server.url, "producer", pool=pool)
    try:
        assert t.submit(make_job("hot-flush-0001")).outcome == "created"
        admin.script_flush()          # as after a restart without persistence of scripts
        assert t.submit(make_job("hot-flush-0002")).outcome == "created"
        admin.client_kill_filter(_type="normal", skipme=True)  # every other client's connection
        assert t.submit(make_job("hot-flush-0003")).outcome == "created"
        assert t.submit(make_job("hot-flush-0003")).outcome == "exists"
        assert t.submit(make_job("hot-flush-0003", data={"x": 1})).outcome == "conflict"
    finally:
        t.close()
    assert admin.xlen(Keys(pool).jobs) == 3


def test_a_finished_threads_connection_is_closed(redis_server, pool):
    """The API's connection threads come and go (an idle one ends after a few seconds): the
    connection of a thread that has ended must close with it, or a long-lived API would pile
    up Redis connections burst after burst."""
    import gc

    admin = redis_server.client()

    def clients():
        return int(admin.info("clients")["connected_clients"])
    t = RedisTransport(redis_server.url, "producer", pool=pool)
    try:
        assert t.submit(make_job("hot-churn-0000")).outcome == "created"
        base = clients()
        for burst in range(3):
            threads = [threading.Thread(target=t.submit, args=(make_job(f"hot-churn-b{burst}-{i:03d}"),))
                       for i in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
        gc.collect()
        # 24 threads made a submission each and ended: their connections are gone
        assert clients() <= base + 1, (clients(), base)
    finally:
        t.close()
    assert admin.xlen(Keys(pool).jobs) == 25
