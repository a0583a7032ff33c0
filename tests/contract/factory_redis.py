"""The Redis Streams transport in the contract suite: a pool of its own on the session's
redis-server (tests/redisfixture.py), with a one-second lease so that reclaim comes quickly."""

import time
import uuid

from redisfixture import require_redis_py

NAME = "redis"
#: its tests carry the integration marker (the session's redis-server is a process)
INTEGRATION = True


class RedisFactory:
    def __init__(self, server):
        self.server = server
        self.pool = f"contract{uuid.uuid4().hex[:10]}"
        self._client = None

    def make(self, worker_id, *, max_job_bytes=1 << 20, observer=None):
        from guestkit_worker.transports.redis import RedisTransport
        return RedisTransport(self.server.url, worker_id, pool=self.pool, lease_seconds=1,
                              max_job_bytes=max_job_bytes, metrics=observer)

    def kill(self, transport):
        # a crash: nothing acknowledged or cleaned up; the worker's entries go idle and are
        # reclaimed a lease later.  Its liveness key would expire a lease later too: deleted
        # here, through a client of the test's own, so the test need not wait for that second.
        from guestkit_worker.transports.redis import Keys
        if self._client is None:
            self._client = self.server.client()
        self._client.delete(Keys(self.pool).alive(transport.worker_id))

    def advance(self, seconds):
        time.sleep(seconds)  # leases run on the server's clock

    def lapse(self, transport):
        pass  # a one-second lease runs out by itself

    def break_store(self):
        self.server.kill()  # SIGKILL: connections refused until it is back

    def mend_store(self):
        self.server.restart()  # same port and data directory: the append-only file kept every write

    def inject_raw(self, data, name):
        from guestkit_worker.transports.redis import Keys
        self.server.client().xadd(Keys(self.pool).jobs, {"job": data})

    def close(self):
        if self._client is not None:
            self._client.close()


def make_factory(request, tmp_path):
    require_redis_py()
    return RedisFactory(request.getfixturevalue("redis_server"))
