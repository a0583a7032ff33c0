#!/usr/bin/env python3
"""Fleet throughput on one redis-server: guestkit-worker --transport redis vs its Redis floor vs
dramatiq, rq, huey and Celery, no-op jobs whose results are stored in Redis.

One redis-server for the whole benchmark (AOF, appendfsync everysec), emptied (FLUSHALL and an
AOF rewrite) before every side of every round.  Per round and shape (P processes x T threads),
every side in a rotating order: N jobs enqueued, then the side's P worker processes started
(rq: P x T processes, one job at a time each), and the rate taken between the first and the
last completion: (N - 1) / (last - first).  A completion is the moment the no-op's result is
made: the worker's ``completed_at`` and the floor's, the peers' task body (which writes
``time.time()`` into a shared stamp file).  Afterwards every side must have N results stored
in Redis.  CPU µs per job: user + system time of the side's worker processes (start-up
included) over N.
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import subprocess
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import fleetpeers  # noqa: E402
from redisserver import RedisServer  # noqa: E402

LAUNCHER = os.path.join(common.BENCH_DIR, "_fleet_worker.py")
FLOOR = os.path.join(common.BENCH_DIR, "_fleet_floor.py")
#: the worker's rate against each peer's, per shape (so against the best peer)
PEER_GOAL = 2.0
PEER_ORDER = ["dramatiq", "rq", "rq-fork", "huey", "celery"]
POOL = "default"


def worker_has_redis():
    """True when the installed CLI has ``--transport redis`` (and redis-py is importable)."""
    return common.worker_has("--transport", "redis", "guestkit_worker.transports.redis.scripts")


def worker_argv(url, threads, i, base):
    return common.worker_exe() + [
        "--transport", "redis", "--redis-url", url, "--max-concurrent", str(threads),
        "--worker-id", f"bench-{i}", "--log-level", "WARNING", "--metrics-enabled", "true",
        "--metrics-addr", "127.0.0.1:0", "--work-dir", os.path.join(base, f"work-{i}"),
        "--jobs-dir", os.path.join(base, f"jobs-{i}"), "--results-dir", os.path.join(base, f"results-{i}")]


def submit_jobs(url, n):
    """N echo jobs through the transport's own submit script with its arguments (what the API
    and `submit` do), all in one MULTI/EXEC: they appear at once to workers already waiting."""
    import redis

    from guestkit_worker.job.timestamps import stamp
    from guestkit_worker.transports.redis.keys import Keys
    from guestkit_worker.transports.redis.queue import digest, hash_facts
    from guestkit_worker.transports.redis.scripts import load_scripts
    client = redis.Redis.from_url(url)
    k = Keys(POOL)
    try:
        s = load_scripts(client)
        pipe = client.pipeline(transaction=True)
        for i in range(n):
            doc = common.echo_job(f"bench-{i:06d}", i)
            s.submit(keys=[k.jobs, k.job(doc["job_id"]), k.index],
                     args=[json.dumps(doc).encode(), doc["job_id"], digest(doc), *hash_facts(doc), stamp()],
                     client=pipe)
        replies = pipe.execute()
    finally:
        client.close()
    created = sum(1 for r in replies if r[0] in (b"created", "created"))
    if created != n:
        raise SideFailed(f"submit: {created} of {n} jobs created")


def _joined(client, k, names):
    """True once every consumer name is in the transport's group (the worker has opened)."""
    try:
        have = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in client.xinfo_consumers(k.jobs, "guestkit-workers")}
    except Exception:  # no stream or group yet
        return False
    return set(names) <= have


def run_native(srv, side, n, procs, threads):
    """The floor or guestkit-worker: N jobs submitted, P processes; completion times are the
    stored results' completed_at.  Returns (jobs/s, CPU µs per job)."""
    from guestkit_worker.transports.redis.keys import Keys
    k = Keys(POOL)
    base = common.fresh_dir(f"fleet-{side}")
    with open(os.path.join(base, "stderr.log"), "wb") as log:
        env = {kk: v for kk, v in os.environ.items() if not kk.startswith("GUESTKIT_WORKER_")}
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # every side's processes are up and waiting on the empty stream before the jobs appear
        client = srv.client()
        if side.startswith("floor"):
            mode = ["min"] if side == "floor-min" else []
            ps = [subprocess.Popen([sys.executable, FLOOR, srv.url, str(threads), f"floor-{i}"] + mode,
                                   env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
                  for i in range(procs)]
            for p in ps:
                if p.stdout.readline() != b"ready\n":
                    raise SideFailed(f"floor: a process did not start (log {base}/stderr.log)")
            for p in ps:
                p.stdin.write(b"go\n")
                p.stdin.flush()
        else:
            ps = [subprocess.Popen(worker_argv(srv.url, threads, i, base), env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=log) for i in range(procs)]
            end = time.monotonic() + 60
            while not _joined(client, k, [f"bench-{i}" for i in range(procs)]):
                if time.monotonic() > end or any(p.poll() is not None for p in ps):
                    _stop(ps)
                    raise SideFailed(f"worker: did not join the group (log {base}/stderr.log)")
                time.sleep(0.02)
            time.sleep(0.2)  # its job threads and consumer started just after it joined
        try:
            submit_jobs(srv.url, n)
            end = time.monotonic() + max(60.0, n / 20)
            while client.xlen(k.jobs) > 0:
                if time.monotonic() > end:
                    raise SideFailed(f"{side}: {client.xlen(k.jobs)} of {n} jobs left after the time limit")
                if all(p.poll() is not None for p in ps):
                    raise SideFailed(f"{side}: processes exited (log {base}/stderr.log)")
                time.sleep(0.02)
            raw = client.mget([k.result(f"bench-{i:06d}") for i in range(n)])
        finally:
            client.close()
            _stop(ps)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if any(x is None for x in raw):
        raise SideFailed(f"{side}: {sum(x is None for x in raw)} of {n} results missing")
    stamps = []
    for x in raw:
        doc = json.loads(x)
        if doc["status"] != "completed":
            raise SideFailed(f"{side}: job {doc['job_id']} {doc['status']}")
        stamps.append(datetime.fromisoformat(doc["completed_at"].replace("Z", "+00:00")).timestamp())
    return (n - 1) / (max(stamps) - min(stamps)), cpu / n * 1e6


class SideFailed(Exception):
    pass


def _stop(procs):
    """SIGKILL: every result has been checked by now, and a graceful stop (Celery's warm
    shutdown, joins of idle threads) would only add seconds per side."""
    for p in procs:
        for f in (p.stdin, p.stdout):
            f.close()
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(10)


def _wait_stored(count, n, timeout=30.0):
    end = time.monotonic() + timeout
    got = count()
    while got < n and time.monotonic() < end:
        time.sleep(0.05)
        got = count()
    return got


def _have_scripts():
    try:
        import redis  # noqa: F401

        from guestkit_worker.transports.redis import scripts  # noqa: F401
        return True
    except ImportError:
        return False


def run_peer(srv, name, n, procs, threads):
    """One side of one round for a peer; returns (jobs/s, CPU µs per job)."""
    peer = fleetpeers.PEERS[name]
    n = max(2, n // peer.jobs_divisor)
    timeout = max(60.0, n / 20)
    path = os.path.join(common.fresh_dir(f"fleet-{name}"), "stamps")
    with open(path, "wb") as fh:
        fh.truncate(8 * n)
    with open(path, "r+b") as fh:
        mm = mmap.mmap(fh.fileno(), 0)
    view = memoryview(mm).cast("d")
    count, per = (procs * threads, 1) if peer.processes_per_thread else (procs, threads)
    env = dict(os.environ, **{fleetpeers.STAMPS_ENV: path})
    with open(path + ".log", "wb") as log:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        ps = [subprocess.Popen([sys.executable, LAUNCHER, name, srv.url, str(per)], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
              for _ in range(count)]
        try:
            peer.enqueue(srv.url, n)  # while the workers start up
            for p in ps:  # each says "ready" once set up, then waits for a line on stdin
                if p.stdout.readline() != b"ready\n":
                    raise SideFailed(f"{name}: a worker process did not start (log {path}.log)")
            for p in ps:
                p.stdin.write(b"go\n")
                p.stdin.flush()
            end = time.monotonic() + timeout
            while min(view) == 0.0:
                if time.monotonic() > end:
                    raise SideFailed(f"{name}: {sum(1 for x in view if x)} of {n} done after {timeout:.0f} s")
                if all(p.poll() is not None for p in ps) and min(view) == 0.0:
                    raise SideFailed(f"{name}: workers exited with {sum(1 for x in view if x)} of {n} done "
                                     f"(log {path}.log)")
                time.sleep(0.02)
            client = srv.client()
            try:
                stored = _wait_stored(lambda: peer.stored(client), n)
            finally:
                client.close()
            if stored != n:
                raise SideFailed(f"{name}: {stored} results stored for {n} jobs")
        finally:
            _stop(ps)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    stamps = list(view)
    view.release()
    mm.close()
    return (n - 1) / (max(stamps) - min(stamps)), cpu / n * 1e6


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=None,
                   help="jobs per side per round (default 2000, --quick 500)")
    p.add_argument("--shapes", default="1x4,2x4", help="PROCESSESxTHREADS list (default 1x4,2x4)")
    p.add_argument("--sides", help="comma-separated subset of the sides")
    p.add_argument("--quick", action="store_true", help="1 round of 500 jobs (development, smoke test)")
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    n = args.jobs or (500 if args.quick else 2000)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    native = ["floor", "worker"] if worker_has_redis() else (["floor"] if _have_scripts() else [])
    sides = native + [s for s in PEER_ORDER if fleetpeers.PEERS[s].version()]
    missing = [s for s in PEER_ORDER if s not in sides]
    if args.sides:
        sides = [s for s in args.sides.split(",") if s in sides + (["floor-min"] if native else [])]
    fleetpeers.quiet_logging()
    rates = {(sh, s): [] for sh in shapes for s in sides}
    cpus = {(sh, s): [] for sh in shapes for s in sides}
    rcpus = {(sh, s): [] for sh in shapes for s in sides}  # redis-server CPU µs per job
    failures = []
    walls = {}  # wall seconds per side, set-up and tear-down included
    with RedisServer() as srv:
        redis_version = srv.version()
        for r in range(rounds):
            for sh in shapes:
                order = sides[r % len(sides):] + sides[:r % len(sides)]
                for side in order:
                    t_side = time.monotonic()
                    srv.fresh()
                    c0 = srv.cpu_seconds()
                    try:
                        if side in ("floor", "floor-min", "worker"):
                            rate, cpu = run_native(srv, side, n, sh[0], sh[1])
                        else:
                            rate, cpu = run_peer(srv, side, n, sh[0], sh[1])
                    except SideFailed as e:
                        failures.append(str(e))
                        print(f"round {r + 1} {sh[0]}x{sh[1]} {side}: FAILED {e}",
                              file=sys.stderr, flush=True)
                        continue
                    rates[(sh, side)].append(rate)
                    cpus[(sh, side)].append(cpu)
                    jobs = max(2, n // fleetpeers.PEERS[side].jobs_divisor) if side in fleetpeers.PEERS else n
                    rcpus[(sh, side)].append((srv.cpu_seconds() - c0) / jobs * 1e6)
                    walls[side] = walls.get(side, 0.0) + time.monotonic() - t_side
                done = ", ".join(f"{s} {rates[(sh, s)][-1]:.0f}/s" for s in sides if rates[(sh, s)])
                print(f"round {r + 1}/{rounds} {sh[0]}x{sh[1]}: {done}", file=sys.stderr, flush=True)

    versions = [f"redis-server {redis_version}"] + [
        f"{s} {fleetpeers.PEERS[s].version()}" for s in sides if s in fleetpeers.PEERS and s != "rq-fork"]
    rows = []
    for sh in shapes:
        floor = common.med(rates[(sh, "floor")]) if "floor" in sides and rates[(sh, "floor")] else None
        for s in sides:
            v = rates[(sh, s)]
            jobs = max(2, n // fleetpeers.PEERS[s].jobs_divisor) if s in fleetpeers.PEERS else n
            rows.append([f"{sh[0]}x{sh[1]} {s}", common.summary(v) if v else "failed",
                         f"{common.med(v) / floor:.2f}" if v and floor else "-",
                         common.summary(cpus[(sh, s)]) if v else "-",
                         common.summary(rcpus[(sh, s)]) if v else "-", jobs])
    text = (f"Fleet no-op jobs/s on one redis-server (AOF everysec), {n} jobs per side per round, "
            f"{rounds} rounds, sides alternating\n" + "versions: " + ", ".join(versions) + "\n"
            + common.table(["shape side", "jobs/s median (min–max)", "× floor", "CPU µs/job median (min–max)",
                          "redis-server CPU µs/job", "jobs"],
                           rows)
            + "\nrq runs one job at a time per process: P x T processes at shape PxT.")
    text += "\nwall time per side, all rounds (s): " + ", ".join(f"{s} {w:.0f}" for s, w in walls.items())
    if missing:
        text += "\nnot installed (pip install -e .[bench]): " + ", ".join(missing)
    if failures:
        text += "\nfailed sides:\n" + "\n".join("  " + f for f in failures)
    goals = fleet_goals(rates, shapes, sides)
    common.finish(args, goals, text)


def fleet_goals(rates, shapes, sides):
    """worker >= 0.8 x floor and >= 2.0 x every peer (so 2 x the best one), per shape."""
    goals = []
    for sh in shapes:
        tag = f"{sh[0]}x{sh[1]}"
        if "worker" not in sides or not rates[(sh, "worker")]:
            goals.append(common.goal(f"fleet {tag}", None, "-", "≥ 0.80 × floor, ≥ 2.00 × each peer",
                                     "no guestkit-worker --transport redis side"))
            continue
        ours = common.med(rates[(sh, "worker")])
        for other, target in [("floor", 0.8)] + [(s, PEER_GOAL) for s in PEER_ORDER]:
            if other not in sides:
                continue
            if not rates[(sh, other)]:
                goals.append(common.goal(f"fleet {tag} vs {other}", None, "-", f"≥ {target:.2f} ×",
                                         f"{other} side failed"))
                continue
            theirs = common.med(rates[(sh, other)])
            goals.append(common.goal(f"fleet {tag} vs {other}", ours / theirs >= target,
                                     f"{ours:.0f} jobs/s = {ours / theirs:.2f} × {other} ({theirs:.0f})",
                                     f"≥ {target:.2f} ×"))
    return goals


if __name__ == "__main__":
    main()
