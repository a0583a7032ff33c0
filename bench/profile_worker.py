#!/usr/bin/env python3
"""Profile one durable no-op worker run with py-spy (not part of bench/run).

    bench/profile_worker.py [--jobs 4000] [--threads 1] [--metrics true] [--top 40]

Prints the leaf frames (self time) and the inclusive time of the worker's own functions, per
thread kind (job threads, main, watchdog), from py-spy's raw samples, idle samples included
(a thread waiting in fsync is time the job costs).
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=4000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--metrics", default="true")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--no-idle", action="store_true")
    p.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL")
    p.add_argument("--kind", default="job",
                   help="thread kind to report: job (default), committer, consumer, main, watchdog")
    args = p.parse_args()
    spy = shutil.which("py-spy") or sys.exit("py-spy missing: pip install py-spy")
    base = common.fresh_dir("profile")
    common.write_jobs(os.path.join(base, "jobs"), args.jobs)
    common.settle()
    raw = os.path.join(base, "spy.txt")
    argv = [spy, "record", "-r", str(args.rate), "-f", "raw", "-o", raw, "--threads", "--nonblocking"]
    if args.gil:
        argv.append("--gil")
    elif not args.no_idle:
        argv.append("--idle")
    argv += ["--", sys.executable] + common.worker_exe() + [
        "--once", "--jobs-dir", os.path.join(base, "jobs"), "--results-dir", os.path.join(base, "results"),
        "--work-dir", os.path.join(base, "work"), "--metrics-enabled", args.metrics,
        "--max-concurrent", str(args.threads), "--log-level", "WARNING", "--worker-id", "prof"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    leaf = collections.Counter()
    incl = collections.Counter()
    per_thread = collections.Counter()
    total = 0
    with open(raw) as fh:
        for line in fh:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            n = int(n)
            frames = stack.split(";")
            thread = frames[0]
            kind = "job" if "job_" in thread else (
                "watchdog" if "watchdog" in thread else
                "main" if "MainThread" in thread else thread.split(" ")[-1][:30])
            per_thread[kind] += n
            if kind != args.kind:
                continue
            total += n
            leaf[frames[-1]] += n
            for f in set(frames[1:]):
                incl[f] += n
    print("samples per thread kind:", dict(per_thread))
    print(f"\n{args.kind} threads, {total} samples; self time (leaf frames):")
    for f, n in leaf.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {f}")
    print("\ninclusive:")
    for f, n in incl.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {f}")


if __name__ == "__main__":
    main()
