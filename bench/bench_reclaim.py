#!/usr/bin/env python3
"""Reclaim cost on Redis: how long a SIGKILLed worker's running entries stay stuck, as a
multiple of --lease-seconds.

Per round, on one redis-server (AOF everysec, emptied per round): 100 ``test.sleep`` jobs
(600 s, the test suite's plugin handler) submitted; worker A (``--max-concurrent 100``) takes
and starts all of them; worker B (``--max-concurrent 100``, idle: the stream is empty) runs
beside it.  A is SIGKILLed once its 100 entries are running; the time until none of them is left in A's
part of the consumer group's pending list (each was claimed by B, which re-runs it or ends it
``WORKER_CRASHED``) is divided by the lease.  The floor is the
lease itself: an entry can be taken over only after it has been idle that long, and A renewed
it at most lease/4 before it died.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import fleet  # noqa: E402
from redisserver import RedisServer  # noqa: E402

ENTRIES = 100
LEASE = 4.0


def sleep_job(i):
    return common.sleep_job(f"reclaim-{i:06d}", i)


def _worker(url, name, base):
    argv = fleet.worker_argv(url, ENTRIES, name, base) + ["--lease-seconds", f"{LEASE:g}"]
    argv[argv.index("--worker-id") + 1] = f"reclaim-{name}"
    return subprocess.Popen(argv, env=common.plugin_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _owners(client, k):
    summary = client.xpending(k.jobs, "guestkit-workers")
    return {(c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): int(c["pending"])
            for c in summary.get("consumers") or []}


def one_round(srv):
    from guestkit_worker.transports.redis import RedisTransport
    from guestkit_worker.transports.redis.keys import Keys
    k = Keys(fleet.POOL)
    base = common.fresh_dir("reclaim")
    t = RedisTransport(srv.url, "bench-producer", pool=fleet.POOL)
    for i in range(ENTRIES):
        t.submit(sleep_job(i))
    t.close()
    client = srv.client()
    a = _worker(srv.url, "a", base)
    b = None
    try:
        end = time.monotonic() + 60
        while len(client.hkeys(k.running)) < ENTRIES:  # every entry started (its start mark set)
            if time.monotonic() > end or a.poll() is not None:
                raise SystemExit(f"worker A started {len(client.hkeys(k.running))} of {ENTRIES} jobs")
            time.sleep(0.05)
        b = _worker(srv.url, "b", base)
        while not any(c["name"] in (b"reclaim-b", "reclaim-b")
                      for c in client.xinfo_consumers(k.jobs, "guestkit-workers")):
            if time.monotonic() > end or b.poll() is not None:
                raise SystemExit("worker B did not join the group")
            time.sleep(0.05)
        a.kill()
        t0 = time.monotonic()
        a.wait(10)
        end = t0 + 10 * LEASE
        # an entry leaves A's pending list only when another consumer claims it (B then re-runs
        # or fails it and acknowledges it under its own name)
        while _owners(client, k).get("reclaim-a", 0) > 0:
            if time.monotonic() > end:
                raise SystemExit(f"after {10 * LEASE:g} s the pending list is {_owners(client, k)}")
            time.sleep(0.01)
        took = time.monotonic() - t0
    finally:
        common.kill_all((a, b))
        client.close()
    return took


def main():
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rounds = args.rounds or 3
    if not fleet.worker_has_redis():
        why = "this guestkit-worker has no --transport redis"
        common.finish(args, [common.goal("reclaim", None, "-", "≤ 1.3 × lease", why)], f"skipped: {why}")
        return
    took = []
    with RedisServer() as srv:
        for r in range(rounds):
            srv.fresh()
            took.append(one_round(srv))
            print(f"round {r + 1}/{rounds}: {took[-1]:.2f} s", file=sys.stderr, flush=True)
    what = (f"Time from SIGKILL of a worker with {ENTRIES} running entries until another worker owns all "
            f"of them, --lease-seconds {LEASE:g}, {rounds} rounds")
    common.finish_reclaim(args, "reclaim", took, LEASE, what)


if __name__ == "__main__":
    main()
