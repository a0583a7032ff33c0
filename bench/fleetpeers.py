"""The peers of the fleet benchmark: dramatiq, rq, huey and Celery on the same redis-server,
each storing its no-op task's result in Redis.

Every peer's task is the same no-op: it writes ``time.time()`` into slot ``n`` of a shared
stamp file (mmap, ``MAP_SHARED``, so a forked rq work horse writes where the benchmark reads)
and returns its payload, which the peer stores as the result.  A peer is used in three places:
``enqueue(url, n)`` in the benchmark process before the timed part, ``work(url, threads)`` in
each worker process (``_fleet_worker.py``; runs until SIGTERM or, for rq, until its queue is
empty), and ``stored(client)`` to check afterwards that every result is in Redis.

Settings are each library's defaults except: logging at WARNING (their CLIs log every task
at INFO), Celery ``task_acks_late`` (so it acknowledges after the task, like the others that
acknowledge) and without mingle/gossip/heartbeat (start-up only).
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import struct
import sys
import threading
import time
from importlib import metadata
from typing import Callable

STAMPS_ENV = "GKW_BENCH_STAMPS"
_STAMPS: mmap.mmap | None = None
_pack = struct.Struct("d").pack_into


def open_stamps(path: str) -> mmap.mmap:
    global _STAMPS
    with open(path, "r+b") as fh:
        _STAMPS = mmap.mmap(fh.fileno(), 0)
    return _STAMPS


def stamp(n: int) -> None:
    _pack(_STAMPS, 8 * n, time.time())


def payload(i: int) -> dict:
    return {"n": i, "text": "no-op"}


def _until_sigterm(stop: Callable[[], None]) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    stop()


# -- huey: RedisHuey, thread consumer ----------------------------------------------------

_huey = {}


def _huey_app(url: str):
    if "app" not in _huey:
        from huey import RedisHuey
        app = RedisHuey("bench", url=url)

        @app.task()
        def echo(data):
            stamp(data["n"])
            return data

        _huey.update(app=app, echo=echo)
    return _huey["app"], _huey["echo"]


def huey_enqueue(url: str, n: int) -> None:
    _app, echo = _huey_app(url)
    for i in range(n):
        echo(payload(i))


def huey_work(url: str, threads: int) -> None:
    app, _echo = _huey_app(url)
    consumer = app.create_consumer(workers=threads, worker_type="thread")
    consumer.run()  # its own SIGTERM handler stops it


def huey_stored(client) -> int:
    return client.hlen("huey.results.bench")


# -- dramatiq: RedisBroker + Results(RedisBackend), worker threads -------------------------

_dq = {}


def _dramatiq(url: str):
    if "echo" not in _dq:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.results import Results
        from dramatiq.results.backends import RedisBackend
        broker = RedisBroker(url=url)
        broker.add_middleware(Results(backend=RedisBackend(url=url, use_namespace_prefix_keys=True)))
        dramatiq.set_broker(broker)

        @dramatiq.actor(store_results=True, queue_name="bench")
        def echo(data):
            stamp(data["n"])
            return data

        _dq.update(broker=broker, echo=echo)
    return _dq["broker"], _dq["echo"]


def dramatiq_enqueue(url: str, n: int) -> None:
    _broker, echo = _dramatiq(url)
    for i in range(n):
        echo.send(payload(i))


def dramatiq_work(url: str, threads: int) -> None:
    import dramatiq
    broker, _echo = _dramatiq(url)
    worker = dramatiq.Worker(broker, worker_threads=threads)
    worker.start()
    _until_sigterm(worker.stop)


def dramatiq_stored(client) -> int:
    return sum(1 for _ in client.scan_iter(match="dramatiq-results:*", count=1000))


# -- rq: SimpleWorker (no fork) or Worker (a forked work horse per job), one job per process ---

def rq_echo(data):
    stamp(data["n"])
    return data


def _rq_queue(url: str):
    from redis import Redis
    from rq import Queue
    return Queue("bench", connection=Redis.from_url(url))


def rq_enqueue(url: str, n: int) -> None:
    q = _rq_queue(url)
    q.enqueue_many([q.prepare_data(rq_echo, args=(payload(i),)) for i in range(n)])


def _rq_work(url: str, cls_name: str) -> None:
    import rq
    q = _rq_queue(url)
    worker = getattr(rq, cls_name)([q], connection=q.connection)
    worker.work(burst=True, logging_level="WARNING")


def rq_simple_work(url: str, threads: int) -> None:
    _rq_work(url, "SimpleWorker")


def rq_fork_work(url: str, threads: int) -> None:
    _rq_work(url, "Worker")


def rq_stored(client) -> int:
    from rq.registry import FinishedJobRegistry
    return FinishedJobRegistry("bench", connection=client).count


# -- Celery: Redis broker and result backend, threads pool ---------------------------------

_cel = {}


def _celery(url: str):
    if "app" not in _cel:
        from celery import Celery
        app = Celery("bench", broker=url, backend=url)
        app.conf.update(task_acks_late=True, broker_connection_retry_on_startup=True,
                        worker_hijack_root_logger=False, task_default_queue="bench")

        @app.task(name="bench.echo")
        def echo(data):
            stamp(data["n"])
            return data

        _cel.update(app=app, echo=echo)
    return _cel["app"], _cel["echo"]


def celery_enqueue(url: str, n: int) -> None:
    app, echo = _celery(url)
    with app.producer_or_acquire() as producer:  # one producer for all, not one per message
        for i in range(n):
            echo.apply_async((payload(i),), producer=producer)


def celery_work(url: str, threads: int) -> None:
    app, _echo = _celery(url)
    worker = app.Worker(pool="threads", concurrency=threads, loglevel="WARNING", quiet=True,
                        without_mingle=True, without_gossip=True, without_heartbeat=True)
    worker.start()  # its own SIGTERM handler makes a warm shutdown


def celery_stored(client) -> int:
    return sum(1 for _ in client.scan_iter(match="celery-task-meta-*", count=1000))


# -- table ----------------------------------------------------------------------------------

def _rq_setup(url: str) -> None:
    import rq.worker  # noqa: F401
    _rq_queue(url).connection.ping()


def _celery_setup(url: str) -> None:
    import celery.apps.worker  # noqa: F401
    import celery.concurrency.thread  # noqa: F401
    _celery(url)


class Peer:
    def __init__(self, name: str, dist: str, setup, enqueue, work, stored, guarantee: str,
                 processes_per_thread: bool = False, jobs_divisor: int = 1) -> None:
        self.name, self.dist, self.setup = name, dist, setup
        self.enqueue, self.work, self.stored = enqueue, work, stored
        self.guarantee = guarantee
        #: rq runs one job at a time per process: P x T worker processes give the same concurrency
        self.processes_per_thread = processes_per_thread
        #: a side this slow runs N / jobs_divisor jobs per round (keeps bench/run short; its rate
        #: is flat from the first job)
        self.jobs_divisor = jobs_divisor

    def version(self) -> str | None:
        try:
            return metadata.version(self.dist)
        except metadata.PackageNotFoundError:
            return None


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("dramatiq", "dramatiq", _dramatiq, dramatiq_enqueue, dramatiq_work, dramatiq_stored,
         "at least once: a message stays in the worker's ack set until acked; a dead worker's "
         "unacked messages are requeued by another worker after its heartbeat times out"),
    Peer("rq", "rq", _rq_setup, rq_enqueue, rq_simple_work, rq_stored,
         "at most once: a job whose worker died is moved to the failed registry "
         "(abandoned), not run again unless the job asked for retries", processes_per_thread=True),
    Peer("rq-fork", "rq", _rq_setup, rq_enqueue, rq_fork_work, rq_stored,
         "as rq (the work horse is a forked child per job)", processes_per_thread=True, jobs_divisor=4),
    Peer("huey", "huey", _huey_app, huey_enqueue, huey_work, huey_stored,
         "at most once: BRPOP takes the task off the list, no acknowledgement; a task running "
         "in a worker that dies is lost"),
    Peer("celery", "celery", _celery_setup, celery_enqueue, celery_work, celery_stored,
         "at least once (task_acks_late): an unacked message returns to the queue after the "
         "visibility timeout (1 h by default)"),
)}


def quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING)
    for name in ("huey", "dramatiq", "rq", "rq.worker", "celery", "kombu"):
        logging.getLogger(name).setLevel(logging.WARNING)


def worker_main(name: str, url: str, threads: int) -> None:
    """Import and set up, say so on stdout, start working when a line comes on stdin (so the
    start-up of the benchmark's worker processes overlaps its enqueueing, and they all start
    together)."""
    quiet_logging()
    open_stamps(os.environ[STAMPS_ENV])
    peer = PEERS[name]
    peer.setup(url)
    print("ready", flush=True)
    sys.stdin.readline()
    peer.work(url, threads)
