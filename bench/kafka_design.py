#!/usr/bin/env python3
"""The Kafka transport's design choice, measured on a real broker: share groups (KIP-932,
confluent-kafka's ShareConsumer, explicit acknowledgement) against a classic consumer group
(pause/resume, out-of-order completion, contiguous commits), both in bench/_kafka_consumer.py.

On one Kafka node (tests/kafkafixture.py), with record lock = share session timeout =
consumer session timeout = LOCK s (so the costs read as multiples of one number):

- latency: one job at a time to an idle worker (4 threads): produce -> result delivered and
  the record acknowledged / its offset committed; 20 jobs after a warm-up;
- throughput: 2,000 no-op jobs produced at once to 4 partitions, one worker process with 4
  threads taking 10 records per poll: jobs/s from the first produce to the last done (share:
  records a poll returns past 10 RELEASEd, or all run; classic: partitions paused at 100 or
  1,000 records waiting);
- long job: 4 jobs of 3 x LOCK s on a worker with 8 threads, alone, then with a second worker
  joining 2 s in: how many times a job starts again while its first worker lives;
- crash: 4 jobs of 120 s on worker A, a second worker B idle beside it; A SIGKILLed 1 s after
  it started them all (the kernel closes its connections), or SIGSTOPped (as a host that is
  lost: no connection closes): the time until B starts each, as a multiple of LOCK.

    bench/kafka_design.py [--json PATH] [--lock 6]
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from kafkaserver import KafkaServer  # noqa: E402

CONSUMER = os.path.join(common.BENCH_DIR, "_kafka_consumer.py")
DESIGNS = ("share", "classic")
#: the throughput rows: (row, design, extra arguments of _kafka_consumer.py)
VARIANTS = [("share", "share", ()), ("share, runs all a poll returns", "share", ("--batch", "0")),
            ("classic", "classic", ("--pause-at", "100")),
            ("classic, pause at 1000", "classic", ("--pause-at", "1000"))]


class Worker:
    """A _kafka_consumer.py process whose JSON events are collected by a reader thread."""

    def __init__(self, design, bootstrap, topic, group, name, threads=4, batch=10, extra=()):
        argv = [sys.executable, CONSUMER, design, "--bootstrap", bootstrap, "--topic", topic,
                "--results", f"{topic}.results", "--group", group, "--threads", str(threads),
                "--batch", str(batch), "--name", name, *extra]
        self.name = name
        self.events, self.lock = [], threading.Lock()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.events.append(json.loads(line))

    def seen(self, ev, job=None):
        with self.lock:
            return [e for e in self.events if e["ev"] == ev and (job is None or e.get("job") == job)]

    def wait(self, predicate, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited {self.proc.returncode} waiting for {what}")
            time.sleep(0.01)
        with self.lock:
            last = self.events[-8:]
        raise RuntimeError(f"timed out after {timeout} s waiting for {what} ({self.name}; last: {last})")

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)


def job_value(job_id, seconds=0.0):
    return json.dumps({"job_id": job_id, "seconds": seconds}).encode()


class Bench:
    def __init__(self, srv, lock):
        self.srv, self.broker, self.lock = srv, srv.broker, lock
        from confluent_kafka import Producer
        self.producer = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 5})

    def topic(self, design, tag, partitions=4):
        name = f"bench.{design}.{tag}.{uuid.uuid4().hex[:6]}"
        self.broker.create_topic(name, partitions)
        self.broker.create_topic(f"{name}.results", partitions)
        group = f"{name}.g"
        if design == "share":
            self.broker.set_group_config(group, {"share.auto.offset.reset": "earliest",
                                                 "share.record.lock.duration.ms": int(self.lock * 1000)})
        return name, group

    def produce(self, topic, values, partition=None):
        for i, v in enumerate(values):
            kwargs = {} if partition is None else {"partition": partition[i % len(partition)]}
            self.producer.produce(topic, v, **kwargs)
        assert self.producer.flush(60) == 0

    def worker(self, design, topic, group, name, **kw):
        return Worker(design, self.srv.bootstrap, topic, group, name, **kw)

    def warm(self, w, topic, partition=None):
        """One job through w: the worker is in the group, assigned and fetching."""
        job = f"warm-{uuid.uuid4().hex[:6]}"
        self.produce(topic, [job_value(job)], partition)
        w.wait(lambda: w.seen("done", job), 90, f"warm-up job {job}")

    # -- measurements --------------------------------------------------------------------
    def latency_and_throughput(self, design, extra=(), jobs=2000, singles=20):
        topic, group = self.topic(design, "lt")
        w = self.worker(design, topic, group, "A", threads=4, batch=10, extra=extra)
        try:
            self.warm(w, topic)
            lat = []
            for i in range(singles):
                job = f"one-{i}"
                t0 = time.time()
                self.produce(topic, [job_value(job)])
                e = w.wait(lambda job=job: w.seen("done", job), 60, job)[0]
                lat.append((e["t"] - t0) * 1000)
            values = [job_value(f"n-{i}") for i in range(jobs)]
            t0 = time.time()
            self.produce(topic, values)
            w.wait(lambda: len([e for e in w.seen("done") if e["job"].startswith("n-")]) >= jobs,
                   300, f"{jobs} jobs")
            last = max(e["t"] for e in w.seen("done") if e["job"].startswith("n-"))
            starts = [e["job"] for e in w.seen("start") if e["job"].startswith("n-")]
            return {"latency_ms": lat, "jobs_per_s": jobs / (last - t0),
                    "redelivered": len(starts) - len(set(starts))}
        finally:
            w.kill()

    def long_job(self, design, joiner: bool):
        topic, group = self.topic(design, "long")
        seconds = 3 * self.lock
        a, b = self.worker(design, topic, group, "A", threads=8, batch=1), None
        try:
            self.warm(a, topic)
            jobs = [f"long-{i}" for i in range(4)]
            t0 = time.time()
            self.produce(topic, [job_value(j, seconds) for j in jobs], partition=[0, 1, 2, 3])
            a.wait(lambda: all(a.seen("start", j) for j in jobs), 60, "4 long jobs started")
            if joiner:
                time.sleep(2)
                b = self.worker(design, topic, group, "B", threads=8, batch=1)
            a.wait(lambda: all(a.seen("done", j) for j in jobs) or a.proc.poll() is not None,
                   seconds + 60, "long jobs done")
            ends = {j: a.seen("done", j)[0]["t"] for j in jobs}
            again = []
            for w in (a, b):
                for j in jobs if w else ():
                    starts = w.seen("start", j)
                    first_is_a = w is a
                    for e in starts[1:] if first_is_a else starts:
                        if e["t"] < ends[j]:
                            again.append(round(e["t"] - t0, 1))
            return {"again": sorted(again), "job_s": seconds}
        finally:
            a.kill()
            if b:
                b.kill()

    def crash(self, design, sig=signal.SIGKILL):
        topic, group = self.topic(design, "crash")
        jobs = [f"crash-{i}" for i in range(4)]
        values = [job_value(j, 120) for j in jobs]
        started = []

        def worker(name, threads):
            started.append(self.worker(design, topic, group, name, threads=threads, batch=1))
            return started[-1]
        try:
            if design == "share":  # A takes the jobs before B exists; one per partition: the
                # group's assignor gives each of A's 4 members one of the 4 partitions
                a = worker("A", 4)
                self.warm(a, topic)
                self.produce(topic, values, partition=[0, 1, 2, 3])
                a.wait(lambda: all(a.seen("start", j) for j in jobs), 60, "A started 4 jobs")
                b = worker("B", 8)
                self.warm(b, topic)  # a warm-up only B can take: A's threads are all busy
            else:  # B first, then A joins and owns half the partitions; the jobs go to A's
                b = worker("B", 8)
                b.wait(lambda: b.seen("assign"), 90, "B assigned")
                a = worker("A", 4)
                owned = lambda: [p for e in a.seen("assign") for p in e["partitions"]]  # noqa: E731
                mine = a.wait(owned, 90, "A assigned")
                time.sleep(2)  # the group settles: B has revoked what A got
                self.produce(topic, values, partition=mine)
                a.wait(lambda: all(a.seen("start", j) for j in jobs), 60, "A started 4 jobs")
            time.sleep(1)
            took = {j: a.seen("start", j)[0]["t"] for j in jobs}
            killed = time.time()
            a.kill(sig)  # SIGKILL: the kernel closes its sockets; SIGSTOP: as a host lost
            b.wait(lambda: all(b.seen("start", j) for j in jobs), 20 * self.lock, "B took A's jobs")
            again = {j: b.seen("start", j)[0]["t"] for j in jobs}
            return {"after_kill_s": [again[j] - killed for j in jobs],
                    "after_take_s": [again[j] - took[j] for j in jobs]}
        finally:
            for w in started:
                w.kill()


def broker_properties(lock: float) -> dict:
    ms = str(int(lock * 1000))
    return {"group.share.record.lock.duration.ms": ms, "group.share.session.timeout.ms": ms,
            "group.share.heartbeat.interval.ms": "1000", "group.consumer.session.timeout.ms": ms,
            "group.consumer.heartbeat.interval.ms": "1000"}


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--lock", type=float, default=6.0, help="lock duration = session timeouts, seconds")
    p.add_argument("--only", help="comma-separated: latency,long,crash")
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else {"latency", "long", "crash"}
    rows, out = [], {}
    with KafkaServer(broker_properties(args.lock)) as srv:
        bench = Bench(srv, args.lock)
        for rnd in range((args.rounds or 2) if "latency" in only else 0):
            for row, design, extra in VARIANTS[rnd % 4:] + VARIANTS[:rnd % 4]:
                r = bench.latency_and_throughput(design, extra)
                lt = out.setdefault(row, {}).setdefault("lt", {"latency_ms": [], "jobs_per_s": []})
                lt["latency_ms"] += r["latency_ms"]
                lt["jobs_per_s"].append(r["jobs_per_s"])
                print(row, "jobs/s", round(r["jobs_per_s"]), "redelivered", r["redelivered"], flush=True)
        for design in DESIGNS:
            r = out.setdefault(design, {})
            if "long" in only:
                r["long_alone"] = bench.long_job(design, joiner=False)
                r["long_join"] = bench.long_job(design, joiner=True)
                print(design, "long", r["long_alone"], r["long_join"], flush=True)
            if "crash" in only:
                r["crash"] = bench.crash(design)
                r["freeze"] = bench.crash(design, signal.SIGSTOP)
                print(design, "crash", r["crash"], "freeze", r["freeze"], flush=True)
    for name, r in out.items():
        row = [name]
        row += ([common.summary(r["lt"]["latency_ms"]), common.summary(r["lt"]["jobs_per_s"])]
                if "lt" in r else ["-", "-"])
        if "long" in only:
            row += ([str(len(r["long_alone"]["again"])), str(len(r["long_join"]["again"]))]
                    if "long_alone" in r else ["-", "-"])
        for case in ("crash", "freeze") if "crash" in only else ():
            if case in r:
                waits = r[case]["after_kill_s"]
                ratios = [x / args.lock for x in waits]
                row += [common.summary(waits, "{:.1f}"), common.summary(ratios, "{:.2f}")]
            else:
                row += ["-", "-"]
        rows.append(row)
    headers = ["design", "1 job ms, median (min-max)", "2,000 no-op jobs/s"]
    if "long" in only:
        headers += [f"long job re-runs, alone (of 4 x {3 * args.lock:g} s)", "... with a joiner"]
    if "crash" in only:
        headers += ["SIGKILL -> re-run s", f"/ {args.lock:g} s", "SIGSTOP -> re-run s", f"/ {args.lock:g} s"]
    text = common.table(headers, rows) + "\n\nraw: " + json.dumps(out)
    common.finish(args, [], text)


if __name__ == "__main__":
    main()
