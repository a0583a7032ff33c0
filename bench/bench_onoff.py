#!/usr/bin/env python3
"""Metrics on vs off: the durable no-op run of throughput.py (real CLI, 2,000 jobs, fresh
directories) with ``--metrics-enabled true`` and ``false``, back to back in alternating order,
15 rounds per thread count.  Per round: rate off / rate on - 1 (positive = metrics make the
worker slower); the verdict takes the median over rounds.  The worker process's CPU time per
job (user + system, including start-up) is shown too: it does not depend on disk latency, which
is most of the round-to-round noise.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import throughput  # noqa: E402


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--threads", default="1,4")
    args = p.parse_args()
    rounds = args.rounds or 15
    counts = [int(x) for x in args.threads.split(",")]
    sides = ["on", "off"]
    rate = {(c, s): [] for c in counts for s in sides}
    cpu = {(c, s): [] for c in counts for s in sides}
    pairs = {c: [] for c in counts}
    for r in range(rounds):
        for c in counts:
            for side in (sides if r % 2 == 0 else sides[::-1]):
                base = common.fresh_dir(f"onoff-{side}-c{c}")
                names = common.write_jobs(os.path.join(base, "jobs"), args.jobs)
                common.settle()
                jobs_s, _ = throughput.run_worker(base, names, c, metrics=side == "on")
                rate[(c, side)].append(jobs_s)
                cpu[(c, side)].append(throughput.LAST_CPU[0] / args.jobs * 1e6)
            pairs[c].append(rate[(c, "off")][-1] / rate[(c, "on")][-1] - 1)
            print(f"round {r + 1}/{rounds} C={c}: on {rate[(c, 'on')][-1]:.0f}/s "
                  f"off {rate[(c, 'off')][-1]:.0f}/s", file=sys.stderr, flush=True)
    rows = []
    for c in counts:
        for s in sides:
            rows.append([f"C={c} metrics {s}", common.summary(rate[(c, s)]), common.summary(cpu[(c, s)])])
    text = (f"Durable no-op jobs/s with metrics on and off, {args.jobs} jobs, {rounds} rounds, alternating\n"
            + common.table(["side", "jobs/s median (min–max)", "CPU µs/job median (min–max)"], rows)
            + "\n\n" + common.table(
                ["threads", "slower with metrics (median)", "min–max", "CPU µs/job on − off"],
                [[f"C={c}", f"{common.med(pairs[c]) * 100:+.1f} %",
                  common.spread([x * 100 for x in pairs[c]], "{:+.1f}"),
                  f"{common.med(cpu[(c, 'on')]) - common.med(cpu[(c, 'off')]):+.1f}"] for c in counts]))
    on_off = {c: 1 / (1 + common.med(pairs[c])) for c in counts}  # rate on / rate off
    goals = [common.goal("metrics on vs off", min(on_off.values()) >= 0.97,
                         " / ".join(f"C={c} {on_off[c]:.3f} ×" for c in counts) + " metrics off",
                         "≥ 0.97 × (on / off)")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
