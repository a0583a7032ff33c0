#!/usr/bin/env python3
"""/metrics latency of the worker's HTTP server vs prometheus_client's own start_http_server,
both serving the same registry, at +1,000 and +10,000 extra label series; /health latency.

The registry is what a daemon serves: the default REGISTRY (process_*, python_* collectors)
with the worker's families (a real Worker on scratch directories, _created series disabled as
the CLI does) plus one extra counter family with N label values.  Every request is a fresh
HTTP/1.1 connection from http.client (GET, body read in full); the two servers alternate
request by request.  /health calls the real Worker.health() (which lists the jobs dir and
creates and removes a probe file in both directories); its yardstick, alternating with it, is
the same kind of request answered by prometheus_client's server from an empty registry (one
HTTP round trip on a fresh connection and nothing else).
"""

import http.client
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from prometheus_client import REGISTRY, CollectorRegistry, Counter, disable_created_metrics, start_http_server  # noqa: E402


def get(port, path):
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    dt = time.perf_counter() - t0
    if resp.status not in (200, 503):
        raise SystemExit(f"GET {path} on port {port}: {resp.status}")
    return dt, len(body)


def main():
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rounds = args.rounds or 25
    disable_created_metrics()
    from guestkit_worker.http.metrics_port import start_server
    from guestkit_worker.runtime.config import WorkerConfig
    from guestkit_worker.runtime.worker import Worker
    base = common.fresh_dir("scrape")
    cfg = WorkerConfig(jobs_dir=os.path.join(base, "jobs"), results_dir=os.path.join(base, "results"),
                       work_dir=os.path.join(base, "work"), worker_id="bench-scrape")
    worker = Worker(cfg, registry=REGISTRY)
    worker.open()
    ours = start_server("127.0.0.1:0", registry=REGISTRY, health=worker.health)
    theirs, _thread = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
    # the yardstick of /health: the same kind of request answered with an empty body
    empty, _thread2 = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    ports = {"guestkit-worker": ours.port, "prometheus_client": theirs.server_port}
    extra = Counter("bench_extra_series", "Extra label series for the scrape benchmark.", ["series"],
                    registry=REGISTRY)
    rows, goals, have = [], [], 0
    ratios = {}
    for target, n_rounds in ((1000, rounds), (10000, max(7, rounds // 3))):
        for i in range(have, target):
            extra.labels(f"s{i:05d}").inc(i)
        have = target
        for port in ports.values():  # warm up both
            get(port, "/metrics")
        times = {k: [] for k in ports}
        size = 0
        for r in range(n_rounds):
            order = list(ports) if r % 2 == 0 else list(reversed(ports))
            for k in order:
                dt, size = get(ports[k], "/metrics")
                times[k].append(dt * 1000)
        ratio = common.med(times["guestkit-worker"]) / common.med(times["prometheus_client"])
        ratios[target] = ratio
        for k in ports:
            rows.append([f"+{target} series, {k}", common.summary(times[k], "{:.1f}"),
                         f"{common.med(times[k]) / common.med(times['prometheus_client']):.2f}",
                         f"{size / 1024:.0f} KiB"])
    health, bare = [], []
    for r in range(rounds * 4):
        for port, into in ((ours.port, health), (empty.server_port, bare))[::1 if r % 2 == 0 else -1]:
            into.append(get(port, "/health" if into is health else "/metrics")[0] * 1000)
    hratio = common.med(health) / common.med(bare)
    rows.append(["/health, guestkit-worker", common.summary(health, "{:.2f}"), "-", "-"])
    rows.append(["empty /metrics, prometheus_client", common.summary(bare, "{:.2f}"), "-", "0 KiB"])
    ours.shutdown()
    theirs.shutdown()
    empty.shutdown()
    worker.transport.close()
    text = ("Scrape latency (ms per request, fresh connection each), servers alternating\n"
            + common.table(["request", "ms median (min–max)", "× prometheus_client", "body"], rows))
    worst = max(ratios.values())
    goals.append(common.goal("scrape /metrics", worst <= 1.2,
                             " / ".join(f"+{k // 1000}k {v:.2f} ×" for k, v in ratios.items())
                             + " prometheus_client", "≤ 1.2 ×"))
    goals.append(common.goal("scrape /health", hratio <= 2.0,
                             f"{hratio:.2f} × an empty /metrics answer ({common.med(health):.2f} ms vs "
                             f"{common.med(bare):.2f})", "≤ 2 ×"))
    common.finish(args, goals, text)


if __name__ == "__main__":
    main()
