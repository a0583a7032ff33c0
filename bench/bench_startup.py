#!/usr/bin/env python3
"""Start-up: ``guestkit-worker --once`` on an empty jobs dir (start, find nothing, exit 0) vs
``python -c "import prometheus_client"`` with the same interpreter; wall time per process,
sides alternating, a fresh set of directories per run.  The console script is run directly
(not through a pyenv shim).  Every side reads compiled bytecode, as an installed package does
(pip compiles it at install time; prometheus_client's is in site-packages): the processes get
one bench-owned PYTHONPYCACHEPREFIX that the warm-up round fills, and PYTHONDONTWRITEBYTECODE is
dropped (with it set, the worker side of an editable checkout compiled all its modules from
source on every run while prometheus_client read its .pyc files)."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def timed(argv, env):
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}: {proc.stderr[-1000:]}")
    return dt * 1000


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or 15
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GUESTKIT_WORKER_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = common.fresh_dir("pycache")
    base_argv = [sys.executable, "-c", "import prometheus_client"]

    def worker():
        d = common.fresh_dir("startup")
        return timed(common.worker_exe() + ["--once", "--jobs-dir", os.path.join(d, "jobs"),
                                            "--results-dir", os.path.join(d, "results"),
                                            "--work-dir", os.path.join(d, "work")], env)

    sides = {"guestkit-worker --once (empty)": worker,
             "python -c 'import prometheus_client'": lambda: timed(base_argv, env),
             "python -c pass": lambda: timed([sys.executable, "-c", "pass"], env)}
    names = list(sides)
    ms = {k: [] for k in names}
    for k in names:  # warm the page cache and the .pyc files
        sides[k]()
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            ms[k].append(sides[k]())
    ref = common.med(ms[names[1]])
    rows = [[k, common.summary(v, "{:.0f}"), f"{common.med(v) / ref:.2f}"] for k, v in ms.items()]
    text = (f"Start-up to exit, ms, {rounds} rounds, sides alternating\n"
            + common.table(["command", "ms median (min–max)", "× import prometheus_client"], rows))
    ratio = common.med(ms[names[0]]) / ref
    goals = [common.goal("start-up", ratio <= 2.0, f"{common.med(ms[names[0]]):.0f} ms = {ratio:.2f} × "
                         f"import prometheus_client ({ref:.0f} ms)", "≤ 2 ×")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
