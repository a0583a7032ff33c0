#!/usr/bin/env python3
"""Idle daemon: CPU seconds used by ``guestkit-worker`` (daemon, defaults: metrics endpoint on,
poll interval 1 s, 4 job threads) over 30 s with an empty jobs dir, and its resident memory.

CPU time is the sum of every thread's on-CPU nanoseconds (/proc/PID/task/*/schedstat),
cross-checked with utime+stime from /proc/PID/stat; RSS is VmRSS (and the peak, VmHWM)
from /proc/PID/status at the end of the window.  The yardstick runs in the same window:
``_bare_poller.py``, the least a polling daemon with a metrics endpoint does
(prometheus_client's server and one scan of a directory per second).
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


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--window", type=float, default=WINDOW)
    args = p.parse_args()
    d = common.fresh_dir("idle")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTKIT_WORKER_")}
    argv = common.worker_exe() + ["--jobs-dir", os.path.join(d, "jobs"),
                                  "--results-dir", os.path.join(d, "results"),
                                  "--work-dir", os.path.join(d, "work"), "--metrics-addr", "127.0.0.1:0",
                                  "--worker-id", "bench-idle"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    bare = subprocess.Popen([sys.executable, os.path.join(common.BENCH_DIR, "_bare_poller.py"),
                             os.path.join(d, "bare-jobs")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        lock = os.path.join(d, "jobs", ".processing", "bench-idle.lock")
        end = time.monotonic() + 30
        while not os.path.exists(lock) and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            raise SystemExit(f"worker exited: {proc.stderr.read()[-1000:]}")
        if bare.stdout.readline().strip() != "ready":
            raise SystemExit("the bare poller did not start")
        time.sleep(2.0)  # past start-up
        pids = (proc.pid, bare.pid)
        c0, k0, t0 = [cpu_ns(x) for x in pids], [ticks(x) for x in pids], time.monotonic()
        time.sleep(args.window)
        c1, k1, t1 = [cpu_ns(x) for x in pids], [ticks(x) for x in pids], time.monotonic()
        rss, hwm = [status(x, "VmRSS") for x in pids], [status(x, "VmHWM") for x in pids]
        threads = [len(os.listdir(f"/proc/{x}/task")) for x in pids]
    finally:
        _stop(proc)
        _stop(bare)
    span = t1 - t0
    cpu = [(c1[i] - c0[i]) / 1e9 for i in (0, 1)]
    pct = [100 * c / span for c in cpu]
    rows = []
    for i, who in enumerate(("guestkit-worker", "bare poller")):
        rows += [[f"{who}: CPU (schedstat, all threads)", f"{cpu[i] * 1000:.1f} ms",
                  f"{pct[i]:.3f} % of a core"],
                 [f"{who}: CPU (utime+stime, 10 ms ticks)", f"{(k1[i] - k0[i]) * 1000:.0f} ms",
                  f"{100 * (k1[i] - k0[i]) / span:.3f} %"],
                 [f"{who}: RSS at the end (VmRSS)", f"{rss[i]:.1f} MiB", ""],
                 [f"{who}: peak RSS (VmHWM)", f"{hwm[i]:.1f} MiB", ""],
                 [f"{who}: threads", str(threads[i]), ""]]
    text = (f"Idle over the same {span:.1f} s: the daemon (metrics endpoint on, poll 1 s, 4 job threads) "
            "and the bare poller (prometheus_client's server + one scan of a directory per second)\n"
            + common.table(["measure", "value", ""], rows))
    cr, rr = cpu[0] / cpu[1], rss[0] / rss[1]
    goals = [common.goal("idle CPU", cr <= 5.0,
                         f"{cr:.1f} × the bare poller ({pct[0]:.3f} vs {pct[1]:.3f} % of a core)", "≤ 5 ×"),
             common.goal("idle RSS", rr <= 1.5,
                         f"{rr:.2f} × the bare poller ({rss[0]:.1f} vs {rss[1]:.1f} MiB)", "≤ 1.5 ×")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
