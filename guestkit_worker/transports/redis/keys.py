"""Names of the Redis keys of one worker pool.

Every key of pool P carries the hash tag ``{P}``, so one pool's keys share a Redis Cluster
slot and the multi-key Lua scripts stay legal under Cluster.  README.md ("A fleet on Redis")
documents each key.
"""

from __future__ import annotations

import re

from ...job.errors import ConfigError

#: consumer group every worker of a pool joins
GROUP = "guestkit-workers"
#: what a pool name may hold (it becomes part of every key, inside a hash tag)
POOL_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Keys:
    """The key names of pool ``pool``."""

    __slots__ = ("pool", "prefix", "jobs", "dead", "index", "running")

    def __init__(self, pool: str) -> None:
        if not isinstance(pool, str) or not POOL_RE.fullmatch(pool):
            raise ConfigError(f"pool name {pool!r}: use 1-64 letters, digits, '.', '_' or '-' "
                              "(it becomes part of the Redis key names)")
        self.pool = pool
        self.prefix = f"guestkit:{{{pool}}}:"
        self.jobs = self.prefix + "jobs"        # stream of waiting and delivered jobs
        self.dead = self.prefix + "dead"        # stream of dead letters
        self.index = self.prefix + "index"      # sorted set: job id by submission time (ms)
        self.running = self.prefix + "running"  # hash: stream entry id -> worker running it

    def job(self, job_id: str) -> str:
        """Hash of one job's state (status, entry, attempt, worker, times, error)."""
        return f"{self.prefix}job:{job_id}"

    def result(self, job_id: str) -> str:
        """String: the job's result document (JSON)."""
        return f"{self.prefix}result:{job_id}"

    def progress(self, job_id: str) -> str:
        """List: the job's progress events (JSON), oldest first."""
        return f"{self.prefix}progress:{job_id}"

    def alive(self, worker_id: str) -> str:
        """String with a lease-long expiry, refreshed while worker_id runs: its liveness."""
        return f"{self.prefix}worker:{worker_id}"

    def idem(self, key: str) -> str:
        """Hash: who holds an idempotency key (job_id, state running|completed, worker)."""
        return f"{self.prefix}idem:{key}"
