"""The floor of the fleet benchmark: one process of a minimal redis-py consumer doing exactly
the Redis work the transport does per job, and nothing else.

``_fleet_floor.py URL THREADS CONSUMER [min]``: T threads, each in a loop: the transport's own
Lua scripts from ``guestkit_worker.transports.redis.scripts`` with the arguments the transport
gives them: ``take`` (read one new entry of the pool's stream as consumer CONSUMER of the
transport's group, admit it and mark it started, in one step; when none waits, a blocking
``XREADGROUP`` and the ``admit`` script, as the transport does when its queue was empty) and
``commit`` (store the result + job state + ack + delete, in one step), the same result
document serialised the same way (compact JSON, the transport's encoder settings).  No
validation, no metrics, no handler, no thread hand-over.  Prints "ready" once connected,
starts on a line on stdin, stops on SIGTERM.  With ``min`` (the side ``floor-min``, for
experiments) a plain ``XREADGROUP`` instead of the take script: the same round trips without
the admission and start bookkeeping.
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

    def one(entry, raw, admitted):
        doc = json.loads(raw)
        job_id = doc["job_id"]
        jk = k.job(job_id)
        started = time.time()
        if not admitted and not minimal:  # read by the blocking XREADGROUP: admit and start it
            s.admit(keys=[k.jobs, k.dead, k.running, jk, k.index, k.result(job_id)],
                    args=[GROUP, me, entry, job_id, hashlib.sha256(raw).hexdigest(), doc["operation"],
                          "1", "1", iso(started), DEAD_MAXLEN, iso(started)])
        now = time.time()
        done = iso(now)
        result = {"job_id": job_id, "status": "completed", "completed_at": done, "worker_id": me,
                  "operation": doc["operation"],
                  "execution_summary": {"started_at": iso(started),
                                        "duration_seconds": round(now - started, 6),
                                        "attempt": 1, "idempotency_key": None},
                  "outputs": {"primary": None, "artifacts": []}, "error": None, "observability": None,
                  "data": doc["payload"]["data"]}
        body = ENCODER.encode(result).encode()
        ok = s.commit(keys=[k.jobs, k.dead, k.running, jk, k.result(job_id), k.progress(job_id),
                            k.result(job_id)],
                      args=[GROUP, me, entry, body, RESULT_TTL, "completed", done, "", "", job_id, "", "",
                            DEAD_MAXLEN, ""])
        if ok != 1:
            raise SystemExit(f"floor: commit of {entry} refused ({ok!r})")

    def loop():
        while not stop.is_set():
            if not minimal:
                rows = s.take(keys=[k.jobs, k.running], args=[GROUP, me, 1, iso(time.time()), k.prefix])
                for entry, fields, verdict in rows:
                    if verdict != b"started":
                        raise SystemExit(f"floor: take answered {verdict!r} for {entry!r}")
                    one(entry.decode(), fields[fields.index(b"job") + 1], True)
                if rows:
                    continue
            reply = r.xreadgroup(GROUP, me, {k.jobs: ">"}, count=1, block=200)
            for _stream, batch in reply or []:
                for entry, fields in batch:
                    one(entry.decode(), fields[b"job"], False)

    print("ready", flush=True)
    sys.stdin.readline()
    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    main()
