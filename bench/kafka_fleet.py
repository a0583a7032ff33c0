#!/usr/bin/env python3
"""Fleet throughput on one Apache Kafka node: guestkit-worker --transport kafka against its
floor, a minimal confluent-kafka consumer doing the same Kafka work per job with the same
batching (bench/_kafka_consumer.py, classic design: one consumer group, records polled 10 at a
time, partitions paused past 1,000 waiting records, the result produced with acks=all and the
offset committed after its delivery, contiguous offsets only).

Per round and shape (P processes x T threads), sides alternating: a fresh jobs topic (PARTITIONS
partitions) and group; the side's P processes started and joined (every partition assigned)
before N no-op jobs appear; the rate is taken between the first and the last completion:
(N - 1) / (last - first).  A floor completion is its "done" event (result delivered, offset
committed); a worker completion is the stored result's ``completed_at``.  Afterwards every job
must have exactly one result.

The worker side runs only when the installed CLI has ``--transport kafka`` (until then the goal
line is SKIPPED): P workers ``run --transport kafka --kafka-bootstrap-servers ... --pool POOL
--max-concurrent T``; jobs go in through the transport's own ``submit`` (SUBMITTERS threads,
as many clients would) and results come back
through its ``get_result`` (both built by the CLI's queue_config from the same flags), so the
harness needs no knowledge of the transport's topics or records.

    bench/kafka_fleet.py [--json PATH] [--rounds 3] [--jobs 2000] [--shapes 1x4,2x4]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from kafka_design import Worker  # noqa: E402
from kafkaserver import KafkaServer  # noqa: E402

PARTITIONS = 8
SUBMITTERS = 32  # threads submitting jobs to the worker's transport
FLOOR_ARGS = ("--batch", "10", "--pause-at", "1000")


class SideFailed(Exception):
    pass


def worker_has_kafka() -> bool:
    """True when the installed CLI has ``--transport kafka`` (and confluent-kafka imports)."""
    return common.worker_has("--kafka-bootstrap-servers", "confluent_kafka")


def run_floor(srv, n, procs, threads):
    topic = f"bench.floor.{uuid.uuid4().hex[:8]}"
    srv.broker.create_topic(topic, PARTITIONS)
    srv.broker.create_topic(f"{topic}.results", PARTITIONS)
    group = f"{topic}.g"
    ws = [Worker("classic", srv.bootstrap, topic, group, f"floor-{i}", threads=threads, extra=FLOOR_ARGS)
          for i in range(procs)]
    try:
        def assigned():
            events = sorted((e["t"], e["ev"], w.name, e["partitions"]) for w in ws
                            for e in w.seen("assign") + w.seen("lost"))
            owned = {}
            for _t, ev, name, partitions in events:  # KIP-848: incremental assign and revoke
                for p in partitions:
                    if ev == "assign":
                        owned[p] = name
                    elif owned.get(p) == name:
                        del owned[p]
            return len(owned) == PARTITIONS and len(set(owned.values())) == procs
        ws[0].wait(assigned, 120, "every partition assigned")
        from confluent_kafka import Producer
        prod = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 5})
        for i in range(n):
            job = f"bench-{i:06d}"
            prod.produce(topic, json.dumps({"job_id": job, "seconds": 0, "doc": common.echo_job(job, i)}),
                         key=job)
        prod.flush(60)
        end = time.monotonic() + max(60.0, n / 20)
        while sum(len(w.seen("done")) for w in ws) < n:
            if time.monotonic() > end:
                raise SideFailed(f"floor: {sum(len(w.seen('done')) for w in ws)} of {n} done in time")
            time.sleep(0.05)
        stamps = [e["t"] for w in ws for e in w.seen("done")]
        jobs = [e["job"] for w in ws for e in w.seen("done")]
        if len(set(jobs)) != n or len(jobs) != n:
            raise SideFailed(f"floor: {len(jobs)} completions of {len(set(jobs))} jobs (want {n} once)")
        return (n - 1) / (max(stamps) - min(stamps))
    finally:
        for w in ws:
            w.kill()


def queue_transport(bootstrap, pool):
    """The worker's own transport, as ``submit`` builds it from the same flags."""
    from guestkit_worker.cli.main import get_parser
    from guestkit_worker.cli.options import queue_config
    from guestkit_worker.transports import open_transport
    args = get_parser().parse_args(["submit", "-", "--transport", "kafka", "--pool", pool,
                                    "--kafka-bootstrap-servers", bootstrap])
    transport = open_transport(queue_config(args, f"bench-submit-{os.getpid()}"))
    transport.open()
    return transport


def run_worker(srv, n, procs, threads):
    pool = f"b{uuid.uuid4().hex[:8]}"
    base = common.fresh_dir("kafka-fleet")
    argv = [*common.worker_exe(), "run", "--transport", "kafka", "--kafka-bootstrap-servers", srv.bootstrap,
            "--pool", pool, "--max-concurrent", str(threads), "--log-level", "WARNING",
            "--metrics-enabled", "false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUESTKIT_WORKER_")}
    transport = queue_transport(srv.bootstrap, pool)
    with open(os.path.join(base, "stderr.log"), "wb") as log:
        ps = [subprocess.Popen([*argv, "--worker-id", f"bench-{i}", "--work-dir", f"{base}/w{i}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=log) for i in range(procs)]
    try:
        time.sleep(10)  # joined: the transport has no join signal the harness can read yet
        t0 = time.monotonic()
        with ThreadPoolExecutor(SUBMITTERS) as pool:  # one submit is a round trip: many at once
            list(pool.map(transport.submit, [common.echo_job(f"bench-{i:06d}", i) for i in range(n)]))
        print(f"worker: {n} jobs submitted in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        end, stamps = time.monotonic() + max(60.0, n / 20), {}
        while len(stamps) < n:
            if time.monotonic() > end:
                raise SideFailed(f"worker: {len(stamps)} of {n} results in time (log {base}/stderr.log)")
            for i in range(n):
                job = f"bench-{i:06d}"
                doc = None if job in stamps else transport.get_result(job)
                if doc is not None:
                    at = doc["completed_at"].replace("Z", "+00:00")
                    stamps[job] = datetime.fromisoformat(at).timestamp()
            time.sleep(0.2)
        return (n - 1) / (max(stamps.values()) - min(stamps.values()))
    finally:
        transport.close()
        for p in ps:
            p.kill()
            p.wait(10)


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--shapes", default="1x4,2x4", help="PROCESSESxTHREADS list")
    args = p.parse_args()
    rounds = args.rounds or 3
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    sides = ["floor", "worker"] if worker_has_kafka() else ["floor"]
    rates = {(sh, s): [] for sh in shapes for s in sides}
    failures = []
    with KafkaServer() as srv:
        for r in range(rounds):
            for sh in shapes:
                this_round = {}
                for side in sides[r % len(sides):] + sides[:r % len(sides)]:
                    run = run_floor if side == "floor" else run_worker
                    try:
                        this_round[side] = run(srv, args.jobs, *sh)
                        rates[(sh, side)].append(this_round[side])
                    except (SideFailed, RuntimeError) as e:  # RuntimeError: a wait ran out
                        failures.append(f"round {r + 1} {sh[0]}x{sh[1]} {side}: {e}")
                        continue
                done = ", ".join(f"{s} {v:.0f}/s" for s, v in this_round.items())
                print(f"round {r + 1}/{rounds} {sh[0]}x{sh[1]}: {done}", file=sys.stderr, flush=True)
    rows, goals = [], []
    for sh in shapes:
        floor = common.med(rates[(sh, "floor")]) if rates[(sh, "floor")] else None
        for s in sides:
            v = rates[(sh, s)]
            rows.append([f"{sh[0]}x{sh[1]} {s}", common.summary(v) if v else "failed",
                         f"{common.med(v) / floor:.2f}" if v and floor else "-"])
        goals.append(fleet_goal(sh, rates, sides, floor))
    text = (f"Kafka fleet no-op jobs/s on one Kafka node, {args.jobs} jobs per side per round, {rounds} "
            f"rounds, {PARTITIONS} partitions\n" + common.table(["shape side", "jobs/s median (min–max)",
                                                                 "× floor"], rows))
    if failures:
        text += "\nfailed sides:\n" + "\n".join("  " + f for f in failures)
    common.finish(args, goals, text)


def fleet_goal(sh, rates, sides, floor):
    tag = f"kafka fleet {sh[0]}x{sh[1]}"
    if "worker" not in sides:
        return common.goal(tag, None, "-", "≥ 0.80 × floor", "no guestkit-worker --transport kafka yet")
    ours = rates[(sh, "worker")]
    if not ours or not floor:
        return common.goal(tag, False, "-", "≥ 0.80 × floor", "a side failed")
    ratio = common.med(ours) / floor
    value = f"{common.med(ours):.0f} jobs/s = {ratio:.2f} × floor ({floor:.0f})"
    return common.goal(tag, ratio >= 0.8, value, "≥ 0.80 × floor")


if __name__ == "__main__":
    main()
