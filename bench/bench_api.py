#!/usr/bin/env python3
"""REST API: submission rate against a bare WSGI floor, how soon a waiting ``result?wait=`` is
answered after its job completes, and /metrics latency while many requests wait.

* **POST rate**: ``guestkit-worker api`` (the API alone) with the file transport on fresh
  directories, and with ``--transport redis`` on a redis-server started by the benchmark (AOF
  everysec, emptied before each round), each vs its floor, ``_api_floor.py``: a bare
  standard-library WSGI app on the same HTTP server that stores each job as durably as that
  transport does (files: the same write, link and fsyncs of JOB_ID.json; Redis: the same
  ``EVALSHA`` of the submit script) and answers 202; sides alternating per round; 4 client
  processes, each with one keep-alive connection, POST distinct echo jobs; rate =
  (N - 1) / (last - first answer).
* **wait delay**: ``guestkit-worker run --api-addr`` (poll interval 1 s); per sample a job file
  is placed in the jobs dir, then ``GET /api/v1/jobs/ID/result?wait=30`` is sent at once; the
  delay is the answer's arrival minus the result's ``completed_at`` (samples whose request was
  sent after ``completed_at`` are dropped: they did not wait).  Goal: median ≤ 5 % of the poll
  interval, i.e. the waiter is woken by the commit, not by polling.
* **/metrics under waits**: ``guestkit-worker api`` with 50 pending jobs; per round /metrics
  is fetched (fresh connection each) with no request waiting, then while 50 clients wait on
  ``result?wait=`` for those jobs.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from redisserver import RedisServer  # noqa: E402

CLIENTS = 4
POLL = 1.0
WAITERS = 50


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith("GUESTKIT_WORKER_")}


def _dirs(base):
    return ["--jobs-dir", os.path.join(base, "jobs"), "--results-dir", os.path.join(base, "results")]


def _wait_port(proc, port, what):
    def up():
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode})")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            c.request("GET", "/health")
            c.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            c.close()
    end = time.monotonic() + 30
    while not up():
        if time.monotonic() > end:
            raise SystemExit(f"{what} not listening on {port}")
        time.sleep(0.05)


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_api(base, extra=()):
    port, mport = common.free_port(), common.free_port()
    argv = common.worker_exe() + ["api", "--api-addr", f"127.0.0.1:{port}",
                                  "--metrics-addr", f"127.0.0.1:{mport}",
                                  "--log-level", "WARNING", "--worker-id", "bench-api"]
    argv += _dirs(base) + list(extra)
    os.makedirs(os.path.join(base, "jobs"), exist_ok=True)
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(proc, mport, "guestkit-worker api (metrics)")
    _wait_port(proc, port, "guestkit-worker api")
    return proc, port, mport


# -- POST rate -------------------------------------------------------------------------------

def post_round(side, per_client, redis=None):
    base = common.fresh_dir(f"api-{side}")
    floor = {"floor": ["files", os.path.join(base, "jobs")], "floor-redis": ["redis", redis.url]}
    if side == "api":
        proc, port, _mport = start_api(base, ["--metrics-enabled", "true"])
    elif side == "redis":
        redis.fresh()
        proc, port, _mport = start_api(base, ["--metrics-enabled", "true", "--transport", "redis",
                                              "--redis-url", redis.url])
    else:
        if side == "floor-redis":
            redis.fresh()
        port = common.free_port()
        proc = subprocess.Popen([sys.executable, os.path.join(common.BENCH_DIR, "_api_floor.py"), str(port),
                                 *floor[side]], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if proc.stdout.readline() != b"ready\n":
            raise SystemExit("the API floor did not start")
    client = os.path.join(common.BENCH_DIR, "_api_client.py")
    clients = [subprocess.Popen([sys.executable, client, str(port), f"{side}{i}", str(per_client)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
               for i in range(CLIENTS)]
    try:
        for c in clients:
            if c.stdout.readline() != b"ready\n":
                raise SystemExit("an API client did not start")
        for c in clients:
            c.stdin.write(b"go\n")
            c.stdin.flush()
        docs = []
        for c in clients:
            out, _ = c.communicate(timeout=300)
            docs.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        _stop(proc)
    statuses = {}
    for d in docs:
        for k, v in d["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    n = CLIENTS * per_client
    if sum(v for k, v in statuses.items() if k.startswith("2")) != n:
        raise SystemExit(f"{side}: answers {statuses} for {n} submissions")
    return (n - 1) / (max(d["last"] for d in docs) - min(d["first"] for d in docs))


# -- wait delay --------------------------------------------------------------------------------

def wait_delays(samples):
    base = common.fresh_dir("api-wait")
    port, mport = common.free_port(), common.free_port()
    argv = common.worker_exe() + ["run", "--api-addr", f"127.0.0.1:{port}",
                                  "--metrics-addr", f"127.0.0.1:{mport}",
                                  "--log-level", "WARNING", "--worker-id", "bench-wait", "--poll-interval",
                                  str(POLL), "--work-dir", os.path.join(base, "work")] + _dirs(base)
    os.makedirs(os.path.join(base, "jobs"), exist_ok=True)
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delays, dropped = [], 0
    try:
        _wait_port(proc, mport, "guestkit-worker run (metrics)")
        _wait_port(proc, port, "guestkit-worker run (API)")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(samples):
            job_id = f"wait-{i:06d}"
            path = os.path.join(base, "jobs", f"{job_id}.json")
            with open(path + ".tmp", "w") as fh:
                json.dump(common.echo_job(job_id, i), fh)
            os.rename(path + ".tmp", path)
            sent = time.time()
            conn.request("GET", f"/api/v1/jobs/{job_id}/result?wait=30")
            resp = conn.getresponse()
            body = json.loads(resp.read())
            got = time.time()
            data = body.get("data", body)
            if resp.status != 200 or data.get("status") != "completed":
                raise SystemExit(f"wait: {resp.status} {body}")
            done = datetime.fromisoformat(data["completed_at"].replace("Z", "+00:00")).timestamp()
            if sent >= done:
                dropped += 1
                continue
            delays.append(got - done)
            time.sleep(0.05)
        conn.close()
    finally:
        _stop(proc)
    return delays, dropped


# -- /metrics with waiting clients -------------------------------------------------------------

def _scrape(port):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/metrics")
        resp = c.getresponse()
        resp.read()
    finally:
        c.close()
    if resp.status != 200:
        raise SystemExit(f"/metrics: {resp.status}")
    return (time.perf_counter() - t0) * 1000


def metrics_under_waits(rounds, per_round, wait_s=5):
    base = common.fresh_dir("api-metrics")
    jobs = os.path.join(base, "jobs")
    os.makedirs(jobs, exist_ok=True)
    ids = [f"pending-{i:06d}" for i in range(WAITERS)]
    for i, job_id in enumerate(ids):
        with open(os.path.join(jobs, f"{job_id}.json"), "w") as fh:
            json.dump(common.echo_job(job_id, i), fh)
    proc, port, mport = start_api(base, ["--api-max-waits", str(WAITERS + 14)])
    idle, busy, answers = [], [], []

    def waiter(job_id):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=wait_s + 30)
        try:
            c.request("GET", f"/api/v1/jobs/{job_id}/result?wait={wait_s}")
            r = c.getresponse()
            r.read()
            answers.append(r.status)
        except OSError as exc:
            answers.append(repr(exc))
        finally:
            c.close()

    try:
        for _ in range(3):
            _scrape(mport)
        for _r in range(rounds):
            idle += [_scrape(mport) for _ in range(per_round)]
            ts = [threading.Thread(target=waiter, args=(j,)) for j in ids]
            for t in ts:
                t.start()
            time.sleep(0.5)  # all 50 requests sent and waiting
            t0 = time.monotonic()
            busy += [_scrape(mport) for _ in range(per_round)]
            if time.monotonic() - t0 > wait_s - 0.5:
                print("warning: the scrapes outlasted the waits", file=sys.stderr)
            for t in ts:
                t.join(wait_s + 40)
    finally:
        _stop(proc)
    bad = [a for a in answers if a != 202]
    if bad:
        raise SystemExit(f"waiting requests answered {bad[:5]} (expected 202: still pending)")
    return idle, busy


GOALS = [("API POST rate", "≥ 0.70 ×"), ("API POST rate (redis)", "≥ 0.70 ×"),
         ("API wait wake-up", "≤ 0.05 × --poll-interval"), ("API /metrics, 50 wait", "≤ 1.2 ×")]


def api_available():
    out = subprocess.run(common.worker_exe() + ["api", "--help"], capture_output=True, text=True, env=_env())
    return out.returncode == 0 and "--api-addr" in out.stdout


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--per-client", type=int, default=250, help="POSTs per client per round (default 250)")
    p.add_argument("--samples", type=int, default=15, help="wait-delay samples (default 15)")
    args = p.parse_args()
    if not api_available():
        why = "this guestkit-worker has no REST API (no `api` command with --api-addr)"
        common.finish(args, [common.goal(g, None, "-", t, why) for g, t in GOALS], f"skipped: {why}")
        return
    rounds = args.rounds or 5
    sides = ["api", "redis", "floor", "floor-redis"]
    rates = {s: [] for s in sides}
    with RedisServer() as redis:
        for r in range(rounds):
            for s in sides[r % len(sides):] + sides[:r % len(sides)]:
                rates[s].append(post_round(s, args.per_client, redis))
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{s} {rates[s][-1]:.0f}/s" for s in sides),
                  file=sys.stderr, flush=True)
    delays, dropped = wait_delays(args.samples)
    idle, busy = metrics_under_waits(3, 30)
    post_ratio = common.med(rates["api"]) / common.med(rates["floor"])
    redis_ratio = common.med(rates["redis"]) / common.med(rates["floor-redis"])
    rows = [["POST /api/v1/jobs, guestkit-worker api", common.summary(rates["api"]), f"{post_ratio:.2f}"],
            ["floor: WSGI app, durable JOB_ID.json", common.summary(rates["floor"]), "1.00"],
            ["same, --transport redis", common.summary(rates["redis"]), f"{redis_ratio:.2f}"],
            ["floor: WSGI app, submit script", common.summary(rates["floor-redis"]), "1.00"]]
    text = (f"POST rate, {CLIENTS} keep-alive clients x {args.per_client} jobs, {rounds} rounds, "
            "sides alternating\n"
            + common.table(["side", "requests/s median (min–max)", "× floor"], rows))
    med_delay = common.med(delays)
    text += (f"\n\nresult?wait= answered after completed_at, {len(delays)} samples ({dropped} dropped: not "
             f"waiting), poll interval {POLL:g} s\n"
             + common.table(["measure", "ms median (min–max)", "× poll interval"],
                            [["delay", common.summary([d * 1000 for d in delays], "{:.1f}"),
                              f"{med_delay / POLL:.3f}"]]))
    mratio = common.med(busy) / common.med(idle)
    text += ("\n\n/metrics latency (fresh connection each), 3 rounds x 30, alternating blocks\n"
             + common.table(["while", "ms median (min–max)", "× none waiting"],
                            [["no request waiting", common.summary(idle, "{:.2f}"), "1.00"],
                             [f"{WAITERS} requests waiting", common.summary(busy, "{:.2f}"),
                              f"{mratio:.2f}"]]))
    goals = [common.goal("API POST rate", post_ratio >= 0.7,
                         f"{common.med(rates['api']):.0f} req/s = {post_ratio:.2f} × durable WSGI "
                         f"({common.med(rates['floor']):.0f})", "≥ 0.70 ×"),
             common.goal("API POST rate (redis)", redis_ratio >= 0.7,
                         f"{common.med(rates['redis']):.0f} req/s = {redis_ratio:.2f} × EVALSHA WSGI "
                         f"({common.med(rates['floor-redis']):.0f})", "≥ 0.70 ×"),
             common.goal("API wait wake-up", med_delay / POLL <= 0.05,
                         f"median {med_delay * 1000:.1f} ms = {med_delay / POLL:.3f} × poll interval",
                         "≤ 0.05 × --poll-interval"),
             common.goal("API /metrics, 50 wait", mratio <= 1.2,
                         f"{mratio:.2f} × none waiting ({common.med(busy):.2f} vs {common.med(idle):.2f} ms)",
                         "≤ 1.2 ×")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
