#!/usr/bin/env python3
"""Durable no-op job throughput: the real worker vs the file-operation floor vs huey.

For each thread count C (1 and 4) and each round, four sides run back to back in a rotating
order, each in a fresh directory with N freshly written job files (written, then os.sync()):

* floor      -- C plain threads in this process doing exactly the worker's file operations per
               job: claim rename into a processing dir, open+fstat+read, json parse and a
               validation-equivalent check, result document -> temp file, fsync, rename, fsync
               of the results dir, rename of the job file into done/;
* worker     -- ``guestkit-worker --once --max-concurrent C --metrics-enabled true`` (real CLI);
* worker-off -- the same with ``--metrics-enabled false`` (only with --sides; bench_onoff.py
               compares metrics on and off with more rounds);
* huey       -- huey's SqliteHuey, default settings, thread consumer with C workers, the same
               number of no-op tasks (each returns its payload, stored as the result).

Rate (jobs/s) is taken the same way on every side: (N-1) / (last completion - first completion),
a completion being the moment the result document is built (the worker's ``completed_at``; the
floor takes time.time() at the same point; huey's SIGNAL_COMPLETE).  That is the steady-state
rate without process start-up and exit, which are measured by bench_startup.py; the wall time
of the whole CLI run (start-up, N jobs, exit) is printed too.
"""

import itertools
import json
import os
import re
import resource
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

#: CPU seconds (user + system) of the last worker process run_worker ran
LAST_CPU = [0.0]
MAX_JOB_BYTES = 1 << 20
ENCODER = json.JSONEncoder(ensure_ascii=False)  # one shared encoder, as the worker has
JOB_ID_RE = re.compile(r"[A-Za-z0-9._-]{8,128}")
DOTTED_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")


# -- floor --------------------------------------------------------------------------------

def _check(doc):
    """Validation-equivalent: the checks validate_document makes on a minimal job."""
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    for key in ("version", "job_id", "created_at", "kind", "operation", "payload"):
        if key not in doc:
            raise ValueError(f"{key} missing")
    if doc["version"] != "1.0" or doc["kind"] != "VMOperation":
        raise ValueError("version/kind")
    if not JOB_ID_RE.fullmatch(doc["job_id"]) or not DOTTED_RE.fullmatch(doc["operation"]):
        raise ValueError("job_id/operation")
    payload = doc["payload"]
    if not isinstance(payload, dict) or not DOTTED_RE.fullmatch(payload["type"]) or "data" not in payload:
        raise ValueError("payload")
    datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00"))
    return doc


def run_floor(base, names, threads):
    jobs = os.path.join(base, "jobs")
    proc = os.path.join(jobs, ".processing", "floor")
    done = os.path.join(jobs, "done")
    results = os.path.join(base, "results")
    for d in (proc, done, results):
        os.makedirs(d, exist_ok=True)
    it = iter(names)
    stamps = []
    counter = itertools.count()
    pid = os.getpid()

    def one(name):
        src, dst = os.path.join(jobs, name), os.path.join(proc, name)
        os.rename(src, dst)
        fd = os.open(dst, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)  # regular file, size limit: what the worker checks before reading
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JOB_BYTES:
                raise ValueError("not a regular file or too large")
            raw = os.read(fd, st.st_size + 1)  # one read: a short read of a regular file is its end
        finally:
            os.close(fd)
        doc = _check(json.loads(raw.decode("utf-8")))
        now = time.time()
        stamps.append(now)
        result = {"job_id": doc["job_id"], "status": "completed", "completed_at": now,
                  "worker_id": "floor", "operation": doc["operation"],
                  "execution_summary": {"started_at": now, "duration_seconds": 0.0, "attempt": 1,
                                        "idempotency_key": None},
                  "outputs": {"primary": None, "artifacts": []}, "error": None, "observability": None,
                  "data": doc["payload"]["data"]}
        body = (ENCODER.encode(result) + "\n").encode()  # serialised as the worker does
        path = os.path.join(results, f"{doc['job_id']}-result.json")
        tmp = os.path.join(results, f".{doc['job_id']}-result.json.{pid}.{next(counter)}.tmp")
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            os.write(wfd, body)
            os.fsync(wfd)
        finally:
            os.close(wfd)
        os.rename(tmp, path)
        dfd = os.open(results, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        os.rename(dst, os.path.join(done, name))

    def loop():
        for name in it:
            one(name)

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    assert len(stamps) == len(names) == len(os.listdir(done)), "floor lost jobs"
    return rate_of(stamps), wall


def rate_of(stamps):
    return (len(stamps) - 1) / (max(stamps) - min(stamps))


# -- worker ---------------------------------------------------------------------------------

def run_worker(base, names, threads, metrics, alt=None):
    """alt: a directory holding a modified guestkit_worker package (A/B experiments)."""
    jobs, results, work = (os.path.join(base, d) for d in ("jobs", "results", "work"))
    exe = [sys.executable, "-m", "guestkit_worker"] if alt else common.worker_exe()
    argv = exe + [
        "--once", "--jobs-dir", jobs, "--results-dir", results, "--work-dir", work,
        "--metrics-enabled", "true" if metrics else "false", "--max-concurrent", str(threads),
        "--log-level", "WARNING", "--worker-id", "bench"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTKIT_WORKER_")}
    if alt:
        env["PYTHONPATH"] = alt
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=base)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU[0] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    stamps = []
    for name in os.listdir(results):
        if name.endswith("-result.json"):
            with open(os.path.join(results, name)) as fh:
                doc = json.load(fh)
            assert doc["status"] == "completed", doc
            stamps.append(datetime.fromisoformat(doc["completed_at"].replace("Z", "+00:00")).timestamp())
    assert len(stamps) == len(names) == len(os.listdir(os.path.join(jobs, "done"))), "worker lost jobs"
    return rate_of(stamps), wall


# -- huey -----------------------------------------------------------------------------------

def run_huey(base, n, threads):
    script = os.path.join(common.BENCH_DIR, "_huey_side.py")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, script, os.path.join(base, "huey.db"), str(n), str(threads)],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"huey side failed: {out.stderr[-2000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["finished"] and doc["count"] == n and doc["results"] == n, doc
    return (n - 1) / (doc["last"] - doc["first"]), wall


def huey_available():
    try:
        import huey  # noqa: F401
        return True
    except ImportError:
        return False


# -- main ------------------------------------------------------------------------------------

def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000, help="jobs per side per round (default 2000)")
    p.add_argument("--threads", default="1,4", help="thread counts (default 1,4)")
    p.add_argument("--sides", help="comma-separated subset of floor,worker,worker-off,huey (for experiments)")
    p.add_argument("--alt", action="append", default=[],
                   help="A/B experiment: directory with a modified guestkit_worker package, run as the extra "
                        "side worker-alt (metrics on); repeat it for more variants (worker-alt2, "
                        "worker-alt3, ...)")
    args = p.parse_args()
    rounds = args.rounds or 5
    counts = [int(x) for x in args.threads.split(",")]
    with_huey = huey_available()
    sides = ["floor", "worker"] + (["huey"] if with_huey else [])
    if args.sides:
        sides = [s for s in args.sides.split(",") if s in sides + ["worker-off"]]
    alts = {("worker-alt" if i == 0 else f"worker-alt{i + 1}"): d for i, d in enumerate(args.alt)}
    sides += list(alts)
    rates = {(c, s): [] for c in counts for s in sides}
    walls = {(c, s): [] for c in counts for s in sides}
    pairs = {c: [] for c in counts}  # per-round on/off ratio
    for r in range(rounds):
        for c in counts:
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for side in order:
                base = common.fresh_dir(f"tp-{side}-c{c}")
                if side == "huey":
                    common.settle()
                    rate, wall = run_huey(base, args.jobs, c)
                else:
                    names = common.write_jobs(os.path.join(base, "jobs"), args.jobs)
                    common.settle()
                    if side == "floor":
                        rate, wall = run_floor(base, names, c)
                    else:
                        rate, wall = run_worker(base, names, c, metrics=side != "worker-off",
                                                alt=alts.get(side))
                rates[(c, side)].append(rate)
                walls[(c, side)].append(wall)
            if "worker-off" in sides and "worker" in sides:
                pairs[c].append(rates[(c, "worker-off")][-1] / rates[(c, "worker")][-1])
            print(f"round {r + 1}/{rounds} C={c}: " + ", ".join(
                f"{s} {rates[(c, s)][-1]:.0f}/s" for s in sides), file=sys.stderr, flush=True)

    rows = []
    for c in counts:
        floor = common.med(rates[(c, "floor")]) if "floor" in sides else None
        for s in sides:
            v = rates[(c, s)]
            rows.append([f"C={c} {s}", common.summary(v), f"{common.med(v) / floor:.2f}" if floor else "-",
                         common.summary([args.jobs / w for w in walls[(c, s)]]) if s != "floor" else "-"])
    text = (f"Durable no-op jobs/s, {args.jobs} jobs per side per round, {rounds} rounds, sides alternating\n"
            + common.table(["side", "jobs/s median (min–max)", "× floor", "jobs/s incl. start-up+exit"],
                           rows))
    goals = []
    have = set(sides)
    if {"worker", "worker-off"} <= have:
        onoff_rows = [[f"C={c}", f"{(common.med(pairs[c]) - 1) * 100:+.1f} %",
                       common.spread([(x - 1) * 100 for x in pairs[c]], "{:+.1f}")] for c in counts]
        text += "\n\nMetrics on vs off (per round: rate off / rate on - 1; positive = metrics cost)\n" + \
            common.table(["threads", "median", "min–max"], onoff_rows)
    if {"worker", "floor"} <= have:
        for c in counts:
            ratio = common.med(rates[(c, "worker")]) / common.med(rates[(c, "floor")])
            goals.append(common.goal(f"durable C={c}", ratio >= 0.8,
                                     f"{common.med(rates[(c, 'worker')]):.0f} jobs/s = {ratio:.2f} × floor "
                                     f"({common.med(rates[(c, 'floor')]):.0f})", "≥ 0.80 ×"))
    if "worker" in have and (not args.sides or "huey" in have):
        for c in counts:
            if with_huey:
                ratio = common.med(rates[(c, "worker")]) / common.med(rates[(c, "huey")])
                goals.append(common.goal(f"peer huey C={c}", ratio >= 0.7,
                                         f"{ratio:.2f} × huey ({common.med(rates[(c, 'huey')]):.0f} jobs/s)",
                                         "≥ 0.70 × (aim)"))
            else:
                goals.append(common.goal(f"peer huey C={c}", None, "-", "≥ 0.70 ×",
                                         "huey not installed: pip install -e .[bench]"))
    if {"worker", "worker-off"} <= have:
        worst = max(common.med(pairs[c]) for c in counts)
        goals.append(common.goal("metrics on vs off", 1 / worst >= 0.97,
                                 " / ".join(f"C={c} {1 / common.med(pairs[c]):.3f} ×" for c in counts)
                                 + " metrics off", "≥ 0.97 × (on / off)"))
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
