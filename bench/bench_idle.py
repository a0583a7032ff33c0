#!/usr/bin/env python3
"""Idle daemon: CPU seconds used by ``guestkit-worker`` (daemon, defaults: metrics endpoint on,
poll interval 1 s, 4 job threads) over 30 s with an empty jobs dir, and its resident memory.

CPU time is the sum of every thread's on-CPU nanoseconds (/proc/PID/task/*/schedstat),
cross-checked with utime+stime from /proc/PID/stat; RSS is VmRSS (and the peak, VmHWM)
from /proc/PID/status at the end of the window.
"""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

WINDOW = 30.0


def cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def ticks(pid):
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(pid, key):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--window", type=float, default=WINDOW)
    args = p.parse_args()
    d = common.fresh_dir("idle")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTKIT_WORKER_")}
    argv = common.worker_exe() + ["--jobs-dir", os.path.join(d, "jobs"), "--results-dir", os.path.join(d, "results"),
                                  "--work-dir", os.path.join(d, "work"), "--metrics-addr", "127.0.0.1:0",
                                  "--worker-id", "bench-idle"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = os.path.join(d, "jobs", ".processing", "bench-idle.lock")
        end = time.monotonic() + 30
        while not os.path.exists(lock) and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            raise SystemExit(f"worker exited: {proc.stderr.read()[-1000:]}")
        time.sleep(2.0)  # past start-up
        c0, k0, t0 = cpu_ns(proc.pid), ticks(proc.pid), time.monotonic()
        time.sleep(args.window)
        c1, k1, t1 = cpu_ns(proc.pid), ticks(proc.pid), time.monotonic()
        rss, hwm = status(proc.pid, "VmRSS"), status(proc.pid, "VmHWM")
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    span = t1 - t0
    cpu = (c1 - c0) / 1e9
    pct = 100 * cpu / span
    rows = [["CPU (schedstat, all threads)", f"{cpu * 1000:.1f} ms", f"{pct:.3f} % of a core"],
            ["CPU (utime+stime, 10 ms ticks)", f"{(k1 - k0) * 1000:.0f} ms", f"{100 * (k1 - k0) / span:.3f} %"],
            ["RSS at the end (VmRSS)", f"{rss:.1f} MiB", ""],
            ["peak RSS (VmHWM)", f"{hwm:.1f} MiB", ""],
            ["threads", str(threads), ""]]
    text = (f"Idle daemon over {span:.1f} s (metrics endpoint on, poll 1 s, 4 job threads)\n"
            + common.table(["measure", "value", ""], rows))
    goals = [common.goal("idle CPU", pct < 0.5, f"{pct:.3f} % of a core", "< 0.5 %"),
             common.goal("idle RSS", rss < 40, f"{rss:.1f} MiB (peak {hwm:.1f})", "< 40 MiB")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
