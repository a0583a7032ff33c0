#!/usr/bin/env python3
"""Reclaim cost on Kafka: how long a SIGKILLed worker's running jobs stay stuck, as a multiple
of --lease-seconds, for guestkit-worker --transport kafka (SKIPPED while the CLI lacks it).

Per round, on one Kafka node (tests/kafkafixture.py) and a fresh pool: ENTRIES ``test.sleep``
jobs (600 s, the test suite's plugin handler) submitted through the transport's own
``submit``; worker A (``--max-concurrent ENTRIES``) starts all of them (its ``job_status``
shows A's worker id, status running); worker B, idle, joins; A is SIGKILLed, and the time until
no job's status shows it running on A (B re-runs it as attempt + 1, or it ended WORKER_CRASHED)
is divided by the lease.  It reads the transport only through its interface (submit, job_status), so it needs
no knowledge of its topics.  Goal (issue 25): ≤ 1.3 × lease.
"""

import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from kafka_fleet import queue_transport, worker_has_kafka  # noqa: E402
from kafkaserver import KafkaServer  # noqa: E402

ENTRIES = 4
LEASE = 6.0


def sleep_job(i):
    return common.sleep_job(f"reclaim-{uuid.uuid4().hex[:6]}-{i}", i)


def start_worker(bootstrap, pool, name, base):
    argv = [*common.worker_exe(), "run", "--transport", "kafka", "--kafka-bootstrap-servers", bootstrap,
            "--pool", pool, "--max-concurrent", str(ENTRIES), "--lease-seconds", f"{LEASE:g}",
            "--worker-id", name, "--log-level", "WARNING", "--metrics-enabled", "false",
            "--work-dir", os.path.join(base, name)]
    log = open(os.path.join(base, f"{name}.log"), "wb")  # noqa: SIM115 (the child keeps writing)
    return subprocess.Popen(argv, env=common.plugin_env(), stdout=subprocess.DEVNULL, stderr=log)


def held_by(transport, jobs, worker):
    """How many of jobs the transport's status shows running on worker."""
    n = 0
    for doc in jobs:
        st = transport.job_status(doc["job_id"])
        n += st is not None and st.status == "running" and st.worker_id == worker
    return n


def wait(predicate, timeout, what, procs=()):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end or any(p.poll() is not None for p in procs):
            raise SystemExit(f"kafka_reclaim: gave up waiting for {what}")
        time.sleep(0.05)


def one_round(srv):
    pool, base = f"r{uuid.uuid4().hex[:8]}", common.fresh_dir("kafka-reclaim")
    transport = queue_transport(srv.bootstrap, pool)
    jobs = [sleep_job(i) for i in range(ENTRIES)]
    a = b = None
    try:
        a = start_worker(srv.bootstrap, pool, "reclaim-a", base)
        for doc in jobs:
            transport.submit(doc)
        wait(lambda: held_by(transport, jobs, "reclaim-a") == ENTRIES, 120, "A to start every job", [a])
        b = start_worker(srv.bootstrap, pool, "reclaim-b", base)
        time.sleep(10)  # B is up and idle (the interface has no sign of a joined worker)
        a.kill()
        t0 = time.monotonic()
        # taken over: running on another worker (attempt + 1) or ended (WORKER_CRASHED)
        wait(lambda: held_by(transport, jobs, "reclaim-a") == 0, 20 * LEASE, "A's jobs taken over", [b])
        return time.monotonic() - t0
    finally:
        common.kill_all((a, b))
        transport.close()


def main():
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rounds = args.rounds or 3
    if not worker_has_kafka():
        why = "this guestkit-worker has no --transport kafka"
        goal = common.goal("kafka reclaim", None, "-", "≤ 1.3 × lease", why)
        common.finish(args, [goal], f"skipped: {why}")
        return
    took = []
    with KafkaServer() as srv:
        for r in range(rounds):
            took.append(one_round(srv))
            print(f"round {r + 1}/{rounds}: {took[-1]:.2f} s", file=sys.stderr, flush=True)
    what = (f"Time from SIGKILL of a worker with {ENTRIES} running jobs until job_status shows none of them "
            f"running on it, --lease-seconds {LEASE:g}, {rounds} rounds, one Kafka node")
    common.finish_reclaim(args, "kafka reclaim", took, LEASE, what)


if __name__ == "__main__":
    main()
