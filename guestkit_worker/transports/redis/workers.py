"""The workers of one pool on Redis, as the ``workers`` command lists them: the consumers of
the pool's group and the workers whose liveness key (``guestkit:{P}:worker:ID``) is there.
A worker is alive while that key is; its last heartbeat is when the key was last refreshed (a
lease before it expires, the lease being this reader's --lease-seconds, the fleet's setting),
and a consumer whose key has expired was last seen when it last read the stream (XINFO's
idle time).  Its running jobs are the entries the running hash assigns it."""

from __future__ import annotations

import json
from typing import Any

from ...job.timestamps import stamp
from ..records import WorkerInfo
from .keys import GROUP
from .link import RedisLink, text


def redis_workers(link: RedisLink) -> list:
    """A :class:`WorkerInfo` per worker of the pool, live ones first, then by id."""
    k = link.k
    with link.guard("workers"):
        now = link.redis_time()
        alive = _live_keys(link)
        try:
            consumers = {text(c["name"]): c for c in link.r.xinfo_consumers(k.jobs, GROUP)}
        except link.redis.exceptions.ResponseError:  # no stream or group yet: no consumer
            consumers = {}
        running = _running_jobs(link)
    out = []
    for worker_id in set(alive) | set(consumers) | set(running):
        info = WorkerInfo(worker_id, link.pool, worker_id in alive, running.get(worker_id, []))
        consumer = consumers.get(worker_id) or {}
        info.held = int(consumer.get("pending") or 0)
        if info.alive:
            info.last_seen = stamp(now - max(0.0, link.lease_seconds - alive[worker_id] / 1000))
        elif consumer:
            info.last_seen = stamp(now - int(consumer.get("idle") or 0) / 1000)
        out.append(info)
    return sorted(out, key=lambda w: (not w.alive, w.worker_id))


def _live_keys(link: RedisLink) -> dict:
    """Worker id -> milliseconds its liveness key has left."""
    prefix = link.k.alive("")
    names = [text(n) for n in link.r.scan_iter(match=_glob_escape(prefix) + "*", count=500)]
    pipe = link.r.pipeline(transaction=False)
    for name in names:
        pipe.pttl(name)
    return {n[len(prefix):]: ttl for n, ttl in zip(names, pipe.execute()) if ttl and ttl > 0}


def _running_jobs(link: RedisLink) -> dict:
    """Worker id -> sorted ids of the jobs it runs (the running hash's entries)."""
    k = link.k
    held = {text(e): text(w) for e, w in link.r.hgetall(k.running).items()}
    pipe = link.r.pipeline(transaction=False)
    for entry in held:
        pipe.xrange(k.jobs, entry, entry)
    out: dict = {}
    for (entry, worker), rows in zip(held.items(), pipe.execute()):
        out.setdefault(worker, []).append(_job_id(rows) or entry)
    return {w: sorted(ids) for w, ids in out.items()}


def _job_id(rows: Any) -> str | None:
    """The job id of an XRANGE reply of one entry: its ``job_id`` field, else its document's."""
    if not rows:
        return None
    fields = {text(a): b for a, b in rows[0][1].items()}
    if fields.get("job_id"):
        return text(fields["job_id"])
    try:
        doc = json.loads(fields.get("job") or b"")
    except ValueError:
        return None
    return doc.get("job_id") if isinstance(doc, dict) and isinstance(doc.get("job_id"), str) else None


def _glob_escape(name: str) -> str:
    """``name`` as a literal in a SCAN MATCH pattern (a pool's key prefix holds ``{`` ``}``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in name)
