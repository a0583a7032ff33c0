"""The life of a worker process on the Redis Streams transport, against a real redis-server
(tests/redisfixture.py) and real worker processes (faultkit.Worker): a stop while it waits for
Redis at start, a second process taking its worker id, and Redis away for longer than a lease.
"""

import signal
import time

import pytest

from conftest import Dirs, wait_for
from faultkit import Worker
from redisfixture import free_port, require_redis_py

pytestmark = pytest.mark.slow


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
    w = Worker(Dirs(tmp_path / "w"), *redis_args(redis_server.url, pool, "--worker-id", "busy-id"), metrics=False)
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
