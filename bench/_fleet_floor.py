"""The floor of the fleet benchmark: one process of a minimal redis-py consumer doing exactly
the Redis work the transport does per job, and nothing else.

``_fleet_floor.py URL THREADS CONSUMER [min]``: T threads, each in a loop: ``XREADGROUP COUNT 1`` from
the pool's stream (as consumer CONSUMER of the transport's group), the transport's own Lua
scripts from ``guestkit_worker.transports.redis.scripts`` with the arguments the transport
gives them (``admit`` the delivered entry, ``start`` it, ``commit`` the result: store + job
state + ack + delete in one step), the same result document serialised the same way (compact
JSON, the transport's encoder settings).  No validation, no metrics, no handler, no thread
hand-over.  Prints "ready" once connected, starts on a line on stdin, stops on SIGTERM.
With ``min`` (the side ``floor-min``, for experiments) only the read and the commit script:
what a transport whose jobs are admitted at submission and marked started in the commit would
need per job.
"""

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


def main():
    url, threads, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    minimal = sys.argv[4:] == ["min"]
    r = redis.Redis.from_url(url)
    s = load_scripts(r)
    k = Keys("default")
    try:
        r.xgroup_create(k.jobs, GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    r.xgroup_createconsumer(k.jobs, GROUP, me)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def one(entry, raw):
        doc = json.loads(raw)
        job_id = doc["job_id"]
        jk = k.job(job_id)
        if not minimal:
            s.admit(keys=[k.jobs, k.dead, k.running, jk, k.index, k.result(job_id)],
                    args=[GROUP, me, entry, job_id, hashlib.sha256(raw).hexdigest(), doc["operation"], "1", "1",
                          iso(time.time()), DEAD_MAXLEN])
        started = time.time()
        if not minimal:
            s.start(keys=[k.jobs, k.running, jk], args=[GROUP, me, entry, 1, iso(started)])
        now = time.time()
        done = iso(now)
        result = {"job_id": job_id, "status": "completed", "completed_at": done, "worker_id": me,
                  "operation": doc["operation"],
                  "execution_summary": {"started_at": iso(started), "duration_seconds": round(now - started, 6),
                                        "attempt": 1, "idempotency_key": None},
                  "outputs": {"primary": None, "artifacts": []}, "error": None, "observability": None,
                  "data": doc["payload"]["data"]}
        body = ENCODER.encode(result).encode()
        ok = s.commit(keys=[k.jobs, k.dead, k.running, jk, k.result(job_id), k.progress(job_id), k.result(job_id)],
                      args=[GROUP, me, entry, body, RESULT_TTL, "completed", done, "", "", job_id, "", "",
                            DEAD_MAXLEN, ""])
        if ok != 1:
            raise SystemExit(f"floor: commit of {entry} refused ({ok!r})")

    def loop():
        while not stop.is_set():
            reply = r.xreadgroup(GROUP, me, {k.jobs: ">"}, count=1, block=200)
            for _stream, batch in reply or []:
                for entry, fields in batch:
                    one(entry.decode(), fields[b"job"])

    print("ready", flush=True)
    sys.stdin.readline()
    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    main()
