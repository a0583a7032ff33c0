"""Shared helpers of the benchmarks: statistics, tables, fresh directories, job files,
running the real CLI, machine description.

Every benchmark prints its own table and, with ``--json PATH``, writes its goal lines
(``{"goal", "value", "target", "ok", "note"}``) for ``bench/run``.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)

#: All benchmark files live under one scratch root.  Nothing is deleted while a benchmark
#: runs (file creation right after mass deletion is slow on this unjournalled ext4); bench/run
#: removes the root only after the last benchmark.
SCRATCH_ENV = "GKW_BENCH_SCRATCH"


def scratch_root():
    root = os.environ.get(SCRATCH_ENV)
    if not root:
        root = os.path.join(tempfile.gettempdir(), "gkw-bench")
    os.makedirs(root, exist_ok=True)
    return root


def fresh_dir(tag):
    """A new, empty directory under the scratch root (one per side per round)."""
    return tempfile.mkdtemp(prefix=f"{tag}-", dir=scratch_root())


def free_port():
    """A TCP port on 127.0.0.1 free right now (for a server that must be told its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_exe():
    """The installed console script (not a pyenv shim: a shim adds ~50 ms of bash)."""
    path = os.path.join(sysconfig.get_path("scripts"), "guestkit-worker")
    if os.path.exists(path):
        return [path]
    found = shutil.which("guestkit-worker")
    return [found] if found else [sys.executable, "-m", "guestkit_worker"]



def worker_has(option, *modules):
    """True when every module imports and the installed CLI's ``run --help`` lists option (a
    transport's benchmark is skipped on a worker built without that transport)."""
    import importlib
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    out = subprocess.run(worker_exe() + ["run", "--help"], capture_output=True, text=True).stdout
    return option in out


#: the test suite's plugin handlers (test.sleep, fault.journal)
PLUGIN_DIR = os.path.join(ROOT, "tests", "plugin")


def plugin_env():
    """The environment for a worker that runs the test suite's plugin handlers: no
    GUESTKIT_WORKER_* settings inherited, tests/plugin first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTKIT_WORKER_")}
    env["PYTHONPATH"] = os.pathsep.join([PLUGIN_DIR] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def kill_all(procs):
    """SIGKILL and reap every process of procs still running (None entries are skipped)."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

# -- statistics ---------------------------------------------------------------------------

def med(values):
    return statistics.median(values) if values else float("nan")


def spread(values, fmt="{:.0f}"):
    if not values:
        return "-"
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}"


def summary(values, fmt="{:.0f}"):
    """'median (min–max)'"""
    return f"{fmt.format(med(values))} ({spread(values, fmt)})"


def table(headers, rows):
    """Plain-text table, left-aligned first column, right-aligned others."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- job documents --------------------------------------------------------------------------

def echo_job(job_id, n):
    """A minimal valid system.echo job (the no-op job of the benchmarks)."""
    return {
        "version": "1.0",
        "job_id": job_id,
        "created_at": "2026-11-01T00:00:00Z",
        "kind": "VMOperation",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"n": n, "text": "no-op"}},
    }


def write_jobs(jobs_dir, count, prefix="bench"):
    """Write count job files the way a producer does (NAME.tmp, then rename); return names."""
    os.makedirs(jobs_dir, exist_ok=True)
    names = []
    for i in range(count):
        job_id = f"{prefix}-{i:06d}"
        name = f"{job_id}.json"
        path = os.path.join(jobs_dir, name)
        with open(path + ".tmp", "wb") as fh:
            fh.write(json.dumps(echo_job(job_id, i)).encode())
        os.rename(path + ".tmp", path)
        names.append(name)
    return names


def settle():
    """Flush dirty pages so a timed part does not pay for the set-up's writeback."""
    os.sync()
    time.sleep(0.05)



def sleep_job(job_id, n):
    """A test.sleep job of 600 s (tests/plugin): it runs until its worker is killed."""
    doc = echo_job(job_id, n)
    doc.update(operation="test.sleep", payload={"type": "test.sleep.v1", "data": {"seconds": 600}})
    return doc

# -- results for bench/run ------------------------------------------------------------------

def goal(name, ok, value, target, note=""):
    return {"goal": name, "ok": ok, "value": value, "target": target, "note": note}


def finish(args, goals, text):
    print(text)
    print()
    for g in goals:
        print(format_goal(g))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"goals": goals, "table": text}, fh, indent=2)



def finish_reclaim(args, name, took, lease, what):
    """Report reclaim times took (s, one a round) against the goal of at most 1.3 leases; what
    is the table's first line (what was timed, on what)."""
    ratio = med(took) / lease
    text = (what + "\n" + table(["measure", "s median (min–max)", "× lease"],
                                 [["taken over after", summary(took, "{:.2f}"), f"{ratio:.2f}"]]))
    value = f"{med(took):.2f} s = {ratio:.2f} × lease ({lease:g} s)"
    finish(args, [goal(name, ratio <= 1.3, value, "≤ 1.3 × lease")], text)

def format_goal(g):
    verdict = {True: "PASS", False: "FALL SHORT", None: "SKIPPED"}[g["ok"]]
    note = f"  [{g['note']}]" if g.get("note") else ""
    return f"{verdict:<10}  {g['goal']:<22} {g['value']}  (goal {g['target']}){note}"


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", help="write goal lines and the table to this file (for bench/run)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per side (default: the benchmark's own)")
    return p


# -- machine ---------------------------------------------------------------------------------

def machine():
    from importlib import metadata

    import prometheus_client  # noqa: F401
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            m = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.M)
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    try:
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--target", scratch_root()],
                            capture_output=True, text=True).stdout.strip()
    except OSError:
        fs = "?"
    try:
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                             text=True).stdout.strip() or "?"
    except OSError:
        rev = "?"
    return {
        "commit": rev,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "prometheus_client": metadata.version("prometheus_client"),
        "huey": _version("huey"),
        "peers": ", ".join(f"{d} {_version(d)}" for d in ("dramatiq", "rq", "celery", "redis")),
        "kernel": platform.release(),
        "scratch": f"{scratch_root()} ({fs})",
    }


def _version(dist):
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
