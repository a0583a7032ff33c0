"""The floor of the fleet benchmark: one process of a minimal redis-py consumer doing exactly
the Redis work the transport does per job, batched as the worker batches it, and nothing else.

``_fleet_floor.py URL THREADS CONSUMER [min]``: THREADS is the number of job slots (the
worker's --max-concurrent).  A taker thread reads, as the worker's consumer does, as many
entries as slots are free in one call of the transport's own ``take`` script (read, admit and
mark started in one Lua step; when none waits, one blocking ``XREADGROUP`` for all free slots
and the ``admit`` script per entry, as the transport does when its queue was empty), builds
each job's result document (the same document, serialised the same way: compact JSON, the
transport's encoder settings) and hands it to a committer thread, which stores every result
waiting in one pipeline of the transport's ``commit`` script (result + job state + ack +
delete per job, one round trip for the batch), as the worker's committer does.  No validation,
no metrics, no handler, no hand-over to job threads.  Prints "ready" once connected, starts on
a line on stdin, stops on SIGTERM.  With ``min`` (the side ``floor-min``, for experiments) a
plain ``XREADGROUP`` instead of the take script: the same round trips without the admission
and start bookkeeping.
"""

import collections
import hashlib
import json
import signal
import sys
import threading
import time
from datetime import datetime, timezone

import redis  # noqa: E402

from guestkit_worker.transports.redis.keys import GROUP, Keys  # noqa: E402
from guestkit_worker.transports.redis.scripts import DEAD_MAXLEN, load_scripts  # noqa: E402

ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
RESULT_TTL = 7 * 24 * 3600


def iso(t):
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Floor:
    """The taker and the committer of one process, sharing ``slots`` job slots."""

    def __init__(self, url, slots, me, minimal):
        self.r = redis.Redis.from_url(url)
        self.s = load_scripts(self.r)
        self.k = Keys("default")
        self.slots, self.me, self.minimal = slots, me, minimal
        self.busy = 0                          # slots taken and not yet committed
        self.cond = threading.Condition()
        self.done = collections.deque()        # (entry, job_id, body) waiting for the committer
        self.stop = threading.Event()

    def join_group(self):
        try:
            self.r.xgroup_create(self.k.jobs, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.r.xgroup_createconsumer(self.k.jobs, GROUP, self.me)

    # -- the taker --------------------------------------------------------------------------
    def take_loop(self):
        k, me = self.k, self.me
        while not self.stop.is_set():
            with self.cond:
                while self.busy >= self.slots and not self.stop.is_set():
                    self.cond.wait(0.2)
                free = self.slots - self.busy
            if not self.minimal:
                rows = self.s.take(keys=[k.jobs, k.running],
                                   args=[GROUP, me, free, iso(time.time()), k.prefix])
                if rows:
                    for entry, _fields, verdict in rows:
                        if verdict != b"started":
                            raise SystemExit(f"floor: take answered {verdict!r} for {entry!r}")
                    self._taken([(e.decode(), f[f.index(b"job") + 1], True) for e, f, _ in rows])
                    continue
            reply = self.r.xreadgroup(GROUP, me, {k.jobs: ">"}, count=free, block=200)
            self._taken([(e.decode(), f[b"job"], False) for _s, batch in reply or [] for e, f in batch])

    def _taken(self, jobs):
        if not jobs:
            return
        with self.cond:
            self.busy += len(jobs)
        out = [self._result(*job) for job in jobs]
        with self.cond:
            self.done.extend(out)
            self.cond.notify_all()

    def _result(self, entry, raw, admitted):
        doc = json.loads(raw)
        job_id = doc["job_id"]
        k = self.k
        started = time.time()
        if not admitted and not self.minimal:  # read by the blocking XREADGROUP: admit and start it
            self.s.admit(keys=[k.jobs, k.dead, k.running, k.job(job_id), k.index, k.result(job_id)],
                         args=[GROUP, self.me, entry, job_id, hashlib.sha256(raw).hexdigest(),
                               doc["operation"], "1", "1", iso(started), DEAD_MAXLEN, iso(started)])
        now = time.time()
        done = iso(now)
        result = {"job_id": job_id, "status": "completed", "completed_at": done, "worker_id": self.me,
                  "operation": doc["operation"],
                  "execution_summary": {"started_at": iso(started),
                                        "duration_seconds": round(now - started, 6),
                                        "attempt": 1, "idempotency_key": None},
                  "outputs": {"primary": None, "artifacts": []}, "error": None, "observability": None,
                  "data": doc["payload"]["data"]}
        return entry, job_id, done, ENCODER.encode(result).encode()

    # -- the committer ----------------------------------------------------------------------
    def commit_loop(self):
        k, me = self.k, self.me
        while not self.stop.is_set():
            with self.cond:
                while not self.done and not self.stop.is_set():
                    self.cond.wait(0.2)
                batch = list(self.done)
                self.done.clear()
            if not batch:
                continue
            calls = [("commit", [k.jobs, k.dead, k.running, k.job(job_id), k.result(job_id),
                                 k.progress(job_id), k.result(job_id)],
                      [GROUP, me, entry, body, RESULT_TTL, "completed", done, "", "", job_id, "", "",
                       DEAD_MAXLEN, ""])
                     for entry, job_id, done, body in batch]
            replies = self.s.batch(calls)  # one round trip: EVALSHA pipelined, as the transport sends them
            if any(reply != 1 for reply in replies):
                raise SystemExit(f"floor: a commit was refused ({replies!r})")
            with self.cond:
                self.busy -= len(batch)
                self.cond.notify_all()


def main():
    url, slots, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    floor = Floor(url, slots, me, sys.argv[4:] == ["min"])
    floor.join_group()
    signal.signal(signal.SIGTERM, lambda *_: floor.stop.set())
    print("ready", flush=True)
    sys.stdin.readline()
    ts = [threading.Thread(target=floor.take_loop), threading.Thread(target=floor.commit_loop)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    main()
