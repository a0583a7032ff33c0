"""Results, job state, progress events and idempotency keys in Redis, and the atomic outcome
(:class:`RedisStore`: the :class:`~..base.ResultStore` half of the transport plus ``commit``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...job.timestamps import stamp as now_iso
from ..base import LeaseLost, Outcome, Reservation, TransportUnavailable
from .held import HeldEntries
from .keys import GROUP
from .link import RedisLink, RedisUnavailable, text
from .scripts import DEAD_MAXLEN

log = logging.getLogger(__name__)

#: one shared encoder (stateless, so threads share it): compact, UTF-8, no NaN
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_result(result: Mapping[str, Any]) -> bytes:
    """The stored form of a result document (TypeError/ValueError when JSON cannot hold it)."""
    return _ENCODER.encode(result).encode("utf-8", "surrogatepass")


class RedisStore:
    """The ResultStore methods and commit over ``link``; ``held``: the entries this worker holds
    (an acknowledged one is forgotten, a fenced one reported)."""

    def __init__(self, link: RedisLink, held: HeldEntries) -> None:
        self.link, self.held = link, held

    def encode_result(self, result: Mapping[str, Any]) -> bytes:
        return encode_result(result)

    def get_result(self, job_id: str) -> dict | None:
        link = self.link
        with link.guard("get_result"):
            raw = link.r.get(link.k.result(job_id))
        return json.loads(raw) if raw else None

    def append_progress(self, job_id: str, event: Mapping[str, Any]) -> None:
        link = self.link
        key = link.k.progress(job_id)
        try:
            with link.guard("progress"):
                pipe = link.r.pipeline(transaction=False)
                pipe.rpush(key, _ENCODER.encode(event))
                pipe.expire(key, link.result_ttl)
                pipe.execute()
        except (TransportUnavailable, TypeError, ValueError) as exc:  # best effort
            log.debug("job %s: progress event dropped (%s)", job_id, exc)

    def read_progress(self, job_id: str, after: int = 0) -> list:
        link = self.link
        with link.guard("progress"):
            items = link.r.lrange(link.k.progress(job_id), max(0, int(after)), -1)
        return [json.loads(i) for i in items]

    def reserve_idempotency_key(self, key: str, job_id: str) -> Reservation:
        """Atomic on the server; a key whose holder's worker is no longer alive (its liveness
        key expired a lease after its last sign of life) is taken over."""
        link, k = self.link, self.link.k
        link.alive()
        with link.guard("idempotency"):
            for _ in range(10):  # the holder changed between the read and the script: read again
                holder_worker = text(link.r.hget(k.idem(key), "worker") or b"")
                reply = link.s.reserve(keys=[k.idem(key), k.alive(holder_worker or link.worker_id)],
                                       args=[job_id, link.worker_id, holder_worker, link.result_ttl])
                if text(reply[0]) != "again":
                    break
        answer = text(reply[0])
        if answer == "won":
            return Reservation(True)
        if answer == "again":
            raise TransportUnavailable(f"idempotency key {key}: its holder keeps changing; try again")
        holder = text(reply[1])
        return Reservation(False, holder_job_id=holder, state=answer,
                           result=self.get_result(holder) if answer == "completed" else None)

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        link = self.link
        with link.guard("idempotency"):
            link.s.release_key(keys=[link.k.idem(key)], args=[job_id])

    # -- the outcome --------------------------------------------------------------------
    def commit(self, outcomes: Sequence[Outcome]) -> None:
        """One Lua script per outcome, all in one round trip: result stored (kept
        ``result_ttl``), job state set, idempotency key kept or released, entry acknowledged
        and deleted; rejected entries without a result go to the dead letters instead.

        While Redis cannot be reached the round trip is tried again with a growing pause
        (0.1 s to 2 s) for up to a lease, or until close() or a stop (the worker's committer
        then tries again after its own pauses, within its shutdown); a retry of a commit that
        had run before its reply was lost is recognised by the script.  After that the
        outcomes get the error and the worker decides."""
        calls = []
        for o in outcomes:
            o.error = None
            try:
                calls.append((o, self._commit_call(o)))
            except (TypeError, ValueError) as exc:  # a result JSON cannot hold
                o.error = exc
        if not calls:
            return
        replies = self._send([("commit", keys, args) for _, (keys, args) in calls])
        if isinstance(replies, TransportUnavailable):
            for o, _ in calls:
                o.error = replies
            return
        for (o, _), reply in zip(calls, replies):
            self._committed(o, reply)

    def _send(self, calls: list) -> list | TransportUnavailable:
        """The replies of one batch of commit calls, tried again while Redis is away (see
        commit); the error once trying is over."""
        link = self.link
        give_up = time.monotonic() + link.lease_seconds
        pause = 0.1
        while True:
            try:
                with link.guard("commit"):
                    return link.s.batch(calls)
            except TransportUnavailable as exc:
                if time.monotonic() + pause > give_up or link.closing.is_set() or link.stopping():
                    return exc
                log.warning("storing %d outcome(s): %s; trying again in %.1fs", len(calls), exc, pause)
                link.pause(pause)
                pause = min(2.0, pause * 2)

    def _committed(self, o: Outcome, reply: Any) -> None:
        """Act on one commit script's reply."""
        d = o.delivery
        if isinstance(reply, Exception):
            self.link.observer.transport_error("commit")
            o.error = RedisUnavailable(f"redis commit: {reply}")
        elif reply in (1, 2):
            self.held.forget(d)
            poison = getattr(d, "poison", None)
            if reply == 1 and o.status == "rejected" and o.result is None and (poison or not d.job_id):
                self.held.dead_lettered((poison or ("rejected",))[0])
        else:
            self.held.lease_lost(d)
            o.error = LeaseLost(f"stream entry {d.name} (job {d.job_id}) now belongs to another worker; "
                                "its outcome was not stored")

    def _commit_call(self, o: Outcome) -> tuple:
        """(keys, args) of the commit script for one outcome."""
        link, k, d = self.link, self.link.k, o.delivery
        job_id = state_of = d.job_id or ""  # state_of: the job whose state and result this sets
        result = o.result
        body = o.encoded if o.encoded is not None else (encode_result(result) if result is not None else b"")
        status = "completed" if o.status == "duplicate" else o.status
        ended = None
        if isinstance(result, dict):
            ended = result.get("completed_at") or result.get("failed_at")
        error = (result or {}).get("error") if isinstance(result, dict) else None
        if error is None and isinstance(o.reason, dict):
            error = o.reason.get("error")
        mode = ""
        if o.idempotency_key:
            mode = "complete" if o.status == "completed" else "release"
        dead_reason = detail = requeue = ""
        poison = getattr(d, "poison", None)
        if o.status == "rejected" and result is None:
            if poison or not job_id:  # nowhere else to keep it: a dead letter
                dead_reason, detail = poison or ("rejected", "")
                if not detail and isinstance(error, dict):
                    detail = str(error.get("message", ""))
            else:  # a job rejected without a result (its id runs here already): back to the queue
                requeue, state_of = d.raw, ""
        elif o.release:
            requeue = d.raw
        idem = k.idem(o.idempotency_key) if o.idempotency_key else k.result(job_id)
        keys = [k.jobs, k.dead, k.running, k.job(job_id), k.result(job_id), k.progress(job_id), idem]
        args = [GROUP, link.worker_id, d.name, body, link.result_ttl, status, ended or now_iso(),
                _ENCODER.encode(error) if error is not None else "", mode, state_of, dead_reason, detail,
                DEAD_MAXLEN, requeue]
        return keys, args
