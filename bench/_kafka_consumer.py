#!/usr/bin/env python3
"""A minimal confluent-kafka job consumer, in one of two designs, for bench/kafka_design.py
and the Kafka floor of bench/kafka_fleet.py.  It prints one JSON line per event on stdout:
``{"ev": "ready"|"start"|"done"|"assign"|"lost", "t": wall clock, "job": id, ...}``.

    _kafka_consumer.py share|classic --bootstrap H:P --topic T --results R --group G
                       [--threads 4] [--batch 10] [--name A]

A job is a JSON record ``{"job_id": ..., "seconds": S}``: the consumer sleeps S (0: a no-op),
produces the result record (key job id) to the results topic, waits until it is delivered
(acks=all), and only then acknowledges the record (share) or commits its offset (classic):
the outcome is stored before the queue lets go of the job.  share waits for a poll's results
(flush: the next poll needs every record of this one acknowledged); classic does not wait, it
commits from the producer's delivery callbacks.

share:   one ShareConsumer per thread (the client is not thread-safe), explicit acknowledgement;
         a poll's batch (records past --batch are RELEASEd: max.poll.records is a soft
         bound) runs in its thread, its results are flushed once, then each record is
         ACCEPTed and the acknowledgements committed asynchronously.
classic: one Consumer (group.protocol=consumer) polled by the main thread, jobs run on a pool
         of threads; when --pause-at records wait for a free thread the assigned partitions
         are paused (the main thread keeps polling, so max.poll.interval.ms never runs out)
         and resumed when it drains; jobs complete out of order and only the contiguous prefix
         of each partition's offsets is committed.  A revoked partition's running jobs are left
         to finish, their offsets are not committed (its new owner gets those records again).
"""

import argparse
import collections
import json
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

OUT = threading.Lock()


def emit(ev: str, **fields):
    line = json.dumps({"ev": ev, "t": time.time(), **fields})
    with OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_job(value: bytes) -> str:
    doc = json.loads(value)
    if doc.get("seconds"):
        time.sleep(float(doc["seconds"]))
    return doc["job_id"]


def producer(args):
    from confluent_kafka import Producer
    return Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 1})


def store_results(prod, job_ids):
    """Produce one result record per job and wait until all are delivered (raises if not)."""
    failed = []
    for job_id in job_ids:
        prod.produce(args_results, json.dumps({"job_id": job_id, "status": "completed"}).encode(),
                     key=job_id.encode(), on_delivery=lambda err, _m: err and failed.append(err))
    if prod.flush(60) or failed:
        raise RuntimeError(f"results not delivered: {failed[:1]}")


# -- share groups --------------------------------------------------------------------------

def share_thread(args, index: int, stop: threading.Event):
    from confluent_kafka import AcknowledgeType, ShareConsumer
    conf = {"bootstrap.servers": args.bootstrap, "group.id": args.group,
            "share.acknowledgement.mode": "explicit", "client.id": f"{args.name}-{index}"}
    if args.batch:
        conf["max.poll.records"] = args.batch
    consumer, prod = ShareConsumer(conf), producer(args)
    consumer.subscribe([args.topic])
    first = True
    while not stop.is_set():
        batch = [m for m in consumer.poll(0.2) if m.error() is None]
        for extra in batch[args.batch or len(batch):]:  # max.poll.records is a soft bound
            consumer.acknowledge(extra, AcknowledgeType.RELEASE)
            emit("released", job=json.loads(extra.value())["job_id"], worker=args.name)
        batch = batch[:args.batch or len(batch)]
        if first:
            emit("ready", thread=index)
            first = False
        if not batch:
            continue
        jobs = []
        for msg in batch:
            emit("start", job=json.loads(msg.value())["job_id"], dc=msg.delivery_count(),
                 partition=msg.partition(), worker=args.name)
            jobs.append(run_job(msg.value()))
        store_results(prod, jobs)
        for msg in batch:
            consumer.acknowledge(msg, AcknowledgeType.ACCEPT)
        consumer.commit_async()
        for job in jobs:
            emit("done", job=job, worker=args.name)
    consumer.close()


def run_share(args):
    stop = threading.Event()
    threads = [threading.Thread(target=share_thread, args=(args, i, stop), daemon=True)
               for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- classic consumer group with pause/resume and contiguous commits ---------------------------

class Offsets:
    """Per partition: offsets handed out and done; the commit point is the lowest not done."""

    def __init__(self):
        self.out, self.done = {}, {}

    def take(self, partition: int, offset: int):
        self.out.setdefault(partition, set()).add(offset)

    def finish(self, partition: int, offset: int):
        if offset in self.out.get(partition, ()):
            self.done.setdefault(partition, set()).add(offset)

    def drop(self, partition: int):
        self.out.pop(partition, None)
        self.done.pop(partition, None)

    def commit_points(self) -> dict:
        """{partition: next offset to commit} for partitions whose lowest offsets are done."""
        points = {}
        for p, out in self.out.items():
            done = self.done.get(p, set())
            nxt = None
            for off in sorted(out):
                if off not in done:
                    break
                nxt = off + 1
            if nxt is not None:
                out.difference_update(range(min(out), nxt))
                done.difference_update(range(min(done), nxt))
                points[p] = nxt
        return points


def run_classic(args):
    from confluent_kafka import Consumer, TopicPartition
    offsets, finished, backlog = Offsets(), queue.Queue(), collections.deque()
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "group.protocol": "consumer", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "client.id": args.name,
                         "max.poll.interval.ms": args.max_poll_interval_ms})

    def assigned(_c, parts):
        emit("assign", partitions=sorted(p.partition for p in parts), worker=args.name)

    def revoked(_c, parts):
        gone = {p.partition for p in parts}
        for p in gone:
            offsets.drop(p)
        kept = [m for m in backlog if m.partition() not in gone]
        backlog.clear()
        backlog.extend(kept)
        emit("lost", partitions=sorted(gone), worker=args.name)

    consumer.subscribe([args.topic], on_assign=assigned, on_revoke=revoked, on_lost=revoked)
    pool, prod = ThreadPoolExecutor(args.threads), producer(args)
    state = {"running": 0, "paused": False}
    emit("ready", worker=args.name)

    def job(msg):
        finished.put((msg.partition(), msg.offset(), run_job(msg.value())))

    while True:
        dispatch(backlog, state, args, pool, job)
        fetch_more(consumer, backlog, state, args, offsets)
        done = drain(finished, 0.01 if state["running"] >= args.threads else 0)
        complete(done, state, prod, offsets, consumer, args, TopicPartition)


def drain(finished, wait: float) -> list:
    """What the threads finished: waits up to wait for the first."""
    done = []
    try:
        done.append(finished.get(timeout=wait) if wait else finished.get_nowait())
        while True:
            done.append(finished.get_nowait())
    except queue.Empty:
        return done


def dispatch(backlog, state, args, pool, job):
    """Start backlog records on free threads."""
    while backlog and state["running"] < args.threads:
        msg = backlog.popleft()
        emit("start", job=json.loads(msg.value())["job_id"], partition=msg.partition(), worker=args.name)
        state["running"] += 1
        pool.submit(job, msg)


def fetch_more(consumer, backlog, state, args, offsets):
    """Poll (always: the group sees a live member); pause the partitions while --pause-at
    records wait (resumed at one batch: each pause drops the client's prefetched records)."""
    if not state["paused"] and len(backlog) >= max(args.pause_at, args.batch):
        consumer.pause(consumer.assignment())
        state["paused"] = True
    elif state["paused"] and len(backlog) <= args.batch:
        consumer.resume(consumer.assignment())
        state["paused"] = False
    # poll returns at the first record (consume(n, t) waits for n or t); then take what is there
    busy = state["running"] >= args.threads  # then wait on the threads instead (drain)
    idle = not state["running"] and not state.get("unstored")
    first = consumer.poll(0 if busy else 0.1 if idle else 0.005)
    msgs = [first] + consumer.consume(args.batch - 1, 0) if first is not None else []
    for msg in msgs:
        if msg.error() is None:
            offsets.take(msg.partition(), msg.offset())
            backlog.append(msg)


def complete(done, state, prod, offsets, consumer, args, TopicPartition):
    """Produce the results; commit what is contiguous among those delivered so far (the
    producer's callbacks run in prod.poll, here: the main thread never waits for a flush)."""
    state["running"] -= len(done)
    stored = state.setdefault("stored", [])
    state["unstored"] = state.get("unstored", 0) + len(done)
    for p, o, job_id in done:
        prod.produce(args_results, json.dumps({"job_id": job_id, "status": "completed"}).encode(),
                     key=job_id.encode(),
                     on_delivery=lambda err, _m, item=(p, o, job_id): stored.append((err, item)))
    prod.poll(0)
    if not stored:
        return
    ready, stored[:] = list(stored), []
    state["unstored"] -= len(ready)
    for err, (p, o, _job) in ready:
        if err is None:
            offsets.finish(p, o)
    points = offsets.commit_points()
    if points:
        consumer.commit(offsets=[TopicPartition(args.topic, p, o) for p, o in points.items()],
                        asynchronous=True)
    for err, (_p, _o, job_id) in ready:
        emit("done" if err is None else "failed", job=job_id, worker=args.name)


def main():
    global args_results
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("design", choices=["share", "classic"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--batch", type=int, default=10,
                   help="records per poll (share: a soft bound, the rest RELEASEd; 0: run all)")
    p.add_argument("--name", default="w")
    p.add_argument("--max-poll-interval-ms", type=int, default=300000)
    p.add_argument("--pause-at", type=int, default=100, help="classic: records waiting for a thread")
    args = p.parse_args()
    args_results = args.results
    (run_share if args.design == "share" else run_classic)(args)


args_results = ""

if __name__ == "__main__":
    main()
