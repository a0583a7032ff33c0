"""The Redis Streams transport in the contract suite: a pool of its own on the session's
redis-server (tests/redisfixture.py), with a one-second lease so that reclaim comes quickly."""

import uuid

from redisfixture import require_redis_py

NAME = "redis"


class RedisFactory:
    def __init__(self, server):
        self.server = server
        self.pool = f"contract{uuid.uuid4().hex[:10]}"

    def make(self, worker_id, *, max_job_bytes=1 << 20):
        from guestkit_worker.transports.redis import RedisTransport
        return RedisTransport(self.server.url, worker_id, pool=self.pool, lease_seconds=1,
                              max_job_bytes=max_job_bytes)

    def kill(self, transport):
        # a crash: nothing acknowledged or cleaned up; the worker's entries go idle and are
        # reclaimed a lease later.  Its liveness key would expire a lease later too: deleted
        # here instead, so the test need not wait for that second.
        transport.r.delete(transport.k.alive(transport.worker_id))
        transport._alive_at = float("inf")  # a dead worker refreshes nothing
        transport.r = transport.rb = None  # and close() has nothing to leave

    def inject_raw(self, data, name):
        from guestkit_worker.transports.redis import Keys
        self.server.client().xadd(Keys(self.pool).jobs, {"job": data})

    def close(self):
        pass


def make_factory(request, tmp_path):
    require_redis_py()
    return RedisFactory(request.getfixturevalue("redis_server"))
