#!/usr/bin/env python3
"""Metrics cost: the worker's per-job recording path, timed in a loop.

One job touches, through WorkerMetrics (a daemon's: last-success tracking on):
label_operation, handler_started (queue-wait histogram), handler_returned (handler counter +
histogram) and job_finished (jobs counter + histogram, last-success time): three histogram
observations plus one attribute store (the two ``*_total`` counters are the histograms' counts,
exposed at scrape time).  (The active-jobs and last-success gauges are read
when scraped: the first from the worker's table of running handlers, the second from that
attribute; the queue depth gauge too, from the worker's count.)  Sides, alternating per
round:

* cached    -- the worker's path (labelled children cached at start);
* uncached  -- the same families updated with ``.labels(...)`` lookups each time (what the
               cache avoids), for reference;
* null      -- NullMetrics (metrics disabled): the cost of the calls alone;
* observe   -- the yardstick: one ``Histogram.observe()`` on a cached labelled child of a
               histogram with the worker's buckets, per loop iteration.

Reported per job in µs, and as a multiple of the yardstick measured in the same rounds (goal:
the cached path ≤ 3.2 × one observe(); the path makes three observations and one attribute
store; its histograms are guestkit_worker.metrics.histogram.LeanHistogram, one lock and a bisect per
observation), plus single-operation reference figures.
"""

import os
import sys
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Histogram  # noqa: E402

from guestkit_worker.metrics.families import DURATION_BUCKETS, NullMetrics, WorkerMetrics  # noqa: E402

LOOPS = 100_000


def make():
    return WorkerMetrics(operations=["system.echo", "guestkit.inspect", "guestkit.convert"],
                         handlers=["system.echo", "guestkit.inspect", "guestkit.convert"],
                         worker_id="bench", pool="default", version="0", max_concurrent=4,
                         registry=CollectorRegistry(), track_last_success=True)


def per_job_cached(m, n):
    label, started = m.label_operation, m.handler_started
    returned, finished = m.handler_returned, m.job_finished
    t0 = time.perf_counter()
    for _ in range(n):
        op = label("system.echo")
        started(0.5)
        returned("system.echo", "success", 0.001)
        finished(op, "completed", 0.002)
    return (time.perf_counter() - t0) / n * 1e6


def one_observe(n):
    h = Histogram("yardstick", "x", ["a", "b"], buckets=DURATION_BUCKETS, registry=CollectorRegistry())
    observe = h.labels("x", "y").observe
    t0 = time.perf_counter()
    for _ in range(n):
        observe(0.002)
    return (time.perf_counter() - t0) / n * 1e6


def per_job_uncached(m, n):
    t0 = time.perf_counter()
    for _ in range(n):
        op = m.label_operation("system.echo")
        m.queue_wait.observe(0.5)
        m.handler_duration.labels("system.echo", "success").observe(0.001)
        m.jobs_duration.labels(op, "completed").observe(0.002)
        m.last_success_value = time.time()
    return (time.perf_counter() - t0) / n * 1e6


def breakdown():
    """Cost of each WorkerMetrics call of the per-job path and of its parts (best of 3, µs)."""
    m = make()
    g = {"m": m, "time": time}
    n = 200_000
    out = {}
    for name, stmt in (("label_operation", "m.label_operation('system.echo')"),
                       ("handler_started", "m.handler_started(0.5)"),
                       ("handler_returned", "m.handler_returned('system.echo', 'success', 0.001)"),
                       ("job_finished", "m.job_finished('system.echo', 'completed', 0.002)"),
                       ("  of which one observe()", "m.queue_wait.observe(0.5)")):
        out[name] = min(timeit.repeat(stmt, globals=g, number=n, repeat=3)) / n * 1e6
    return out


def references():
    r = CollectorRegistry()
    c = Counter("ref_plain", "x", registry=r)
    cl = Counter("ref_labelled", "x", ["a", "b"], registry=r)
    h = Histogram("ref_hist", "x", ["a", "b"], buckets=DURATION_BUCKETS, registry=r)
    child = h.labels("x", "y")
    n = 200_000
    g = {"c": c, "cl": cl, "h": h, "child": child}
    out = {}
    for name, stmt in (("Counter.inc()", "c.inc()"), (".labels(a,b).inc()", "cl.labels('x', 'y').inc()"),
                       (".labels(a,b).observe()", "h.labels('x', 'y').observe(0.3)"),
                       ("cached child .observe()", "child.observe(0.3)")):
        out[name] = min(timeit.repeat(stmt, globals=g, number=n, repeat=3)) / n * 1e6
    return out


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or 7
    sides = {"cached": lambda: per_job_cached(make(), LOOPS),
             "uncached": lambda: per_job_uncached(make(), LOOPS),
             "null": lambda: per_job_cached(NullMetrics(), LOOPS),
             "observe": lambda: one_observe(LOOPS)}
    res = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            res[k].append(sides[k]())
    yard = common.med(res["observe"])
    rows = [[k, common.summary(v, "{:.2f}"), f"{common.med(v) / yard:.2f}"] for k, v in res.items()]
    refs = references()
    parts = breakdown()
    text = (f"Per-job metrics recording path, {LOOPS} jobs per round, {rounds} rounds\n"
            + common.table(["path", "µs per job median (min–max)", "× one observe()"], rows)
            + "\n\nWorkerMetrics calls (best of 3, µs)\n"
            + common.table(["call", "µs"], [[k, f"{v:.2f}"] for k, v in parts.items()])
            + "\n\nSingle operations (best of 3, µs)\n"
            + common.table(["operation", "µs"], [[k, f"{v:.2f}"] for k, v in refs.items()]))
    cached = common.med(res["cached"])
    ratio = cached / yard
    goals = [common.goal("metrics cost", ratio <= 3.2,
                         f"{ratio:.2f} × one observe() ({cached:.2f} µs/job, observe {yard:.2f} µs; "
                         f"{common.med(res['uncached']) / yard:.2f} × with .labels())", "≤ 3.2 ×")]
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
