"""The pool's state as every worker of a Kafka pool replays it: the waiting entries, who holds
which (claims with a generation and a lease), job states, results, progress events,
idempotency keys and live workers.

Every change is one command record in the pool's one-partition state topic.  Each worker
applies every record, in the topic's order, with :meth:`PoolState.apply`; it is deterministic
(its clock is the records' broker time stamps, never the local one), so all replicas make the
same decisions: two workers asking for the same entry get it in the order the broker wrote
their commands, and only the first wins.  What a worker asked is answered by the application
of its own command (found by its request id).  No Kafka here: plain data in, plain data out.
"""

from __future__ import annotations

import base64
import collections
import datetime
from dataclasses import dataclass, field
from typing import Any

from ...job.states import FINAL_STATUSES
from ..common import follow_requeue, forget_finished

#: request ids remembered to drop a command the producer sent twice (a retry after a lost answer)
SEEN_REQUESTS = 20000
#: dead letters remembered for the dead-letter topic and the tests
MAX_DEAD_LETTERS = 10000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


@dataclass(eq=False)
class Entry:
    """One job document waiting or held: ``job_id`` None for bytes that are no job (poison)."""

    id: int
    raw: bytes
    job_id: str | None = None
    deliveries: int = 0
    size: int = 0
    since: float = 0.0  # state time it was queued (this entry: a retry queues a new one)
    skip: dict = field(default_factory=dict)  # worker id -> state time it may have it again

    @property
    def name(self) -> str:
        return f"entry-{self.id}"


@dataclass(eq=False)
class Claim:
    """An entry handed to worker ``owner`` in its life ``life``; ``generation`` names the hand-out."""

    entry: Entry
    owner: str
    life: str | None
    generation: int
    lease: float
    expires: float
    started: bool = False


@dataclass(eq=False)
class Job:
    job_id: str
    seq: int
    entry: int
    digest: str
    operation: str | None
    cancellable: bool
    attempt: int
    submitted_at: str
    status: str = "pending"
    worker_id: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    error: dict | None = None
    cancel: bool = False
    ended: float | None = None
    unrun: bool = False  # dead-lettered before its handler started: its id is free again
    last_generation: int | None = None  # the hand-out whose outcome was stored last


@dataclass(eq=False)
class KeyHold:
    job_id: str
    state: str
    worker_id: str
    life: str | None = None
    ended: float | None = None


@dataclass(eq=False)
class Life:
    """A live worker: its current life (one per open()), last sign of life and lease."""

    life: str
    beat: float
    lease: float


class PoolState:
    """The replicated state of one pool; ``apply`` is its only writer."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.waiting: collections.OrderedDict[int, Entry] = collections.OrderedDict()
        self.claims: dict[int, Claim] = {}
        self.jobs: dict[str, Job] = {}
        self.results: dict[str, str] = {}
        self.progress: dict[str, list] = {}
        self.keys: dict[str, KeyHold] = {}
        self.lives: dict[str, Life] = {}
        self.dead: collections.deque = collections.deque(maxlen=MAX_DEAD_LETTERS)
        self.sources: set = set()
        self.fresh_dead: list = []   # the dead letters the command being applied made
        self._seen: collections.OrderedDict = collections.OrderedDict()
        self._number = 0

    # -- the one writer ------------------------------------------------------------------
    def apply(self, cmd: dict, ts: float) -> Any:
        """Apply one command record written at broker time ``ts`` (seconds); its answer, or
        None for a command sent twice (its first application answered) or unknown."""
        self.clock = max(self.clock, ts)
        self.fresh_dead = []
        rid = cmd.get("rid")
        if rid is not None:
            if rid in self._seen:
                return None
            self._seen[rid] = True
            if len(self._seen) > SEEN_REQUESTS:
                self._seen.popitem(last=False)
        handler = getattr(self, "_op_" + str(cmd.get("op")), None)
        return handler(cmd) if handler is not None else None

    # -- helpers (read by the transport too) ---------------------------------------------
    def number(self) -> int:
        self._number += 1
        return self._number

    def alive(self, worker: str, life: str | None) -> bool:
        """worker is alive in ``life``: its current life, signed within its lease."""
        cur = self.lives.get(worker)
        return life is not None and cur is not None and cur.life == life and \
            self.clock - cur.beat <= cur.lease

    def reclaimable(self, worker: str, life: str | None, now: float) -> bool:
        """Some claim another worker holds has lapsed by state time ``now`` (an estimate: the
        reclaim command decides with its own time)."""
        for claim in self.claims.values():
            if claim.owner == worker and claim.life == life:
                continue
            cur = self.lives.get(claim.owner)
            gone = claim.life is None or cur is None or cur.life != claim.life or now - cur.beat > cur.lease
            if gone or claim.expires <= now:
                return True
        return False

    def claim_of(self, eid: Any, generation: Any) -> Claim | None:
        claim = self.claims.get(eid)
        return claim if claim is not None and claim.generation == generation else None

    def add_entry(self, raw: bytes, job_id: str | None, size: int | None = None) -> Entry:
        entry = Entry(self.number(), raw, job_id, size=len(raw) if size is None else size, since=self.clock)
        self.waiting[entry.id] = entry
        return entry

    def dead_letter(self, entry: Entry, reason: str, detail: str, worker: str) -> None:
        self.waiting.pop(entry.id, None)
        self.claims.pop(entry.id, None)
        at = datetime.datetime.fromtimestamp(self.clock, datetime.timezone.utc)
        letter = {"entry": entry.name, "id": entry.id, "job_id": entry.job_id, "reason": reason,
                  "detail": detail, "worker": worker, "raw": entry.raw, "size": entry.size,
                  "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        self.dead.append(letter)
        self.fresh_dead.append(letter)

    # -- workers -------------------------------------------------------------------------
    def _op_hello(self, c: dict) -> dict:
        cur = self.lives.get(c["w"])
        if cur is not None and cur.life != c["life"] and self.alive(c["w"], cur.life):
            return {"busy": True}
        self.lives[c["w"]] = Life(c["life"], self.clock, float(c["lease"]))
        return {"busy": False}

    def _op_beat(self, c: dict) -> None:
        cur = self.lives.get(c["w"])
        if cur is not None and cur.life == c["life"]:
            cur.beat = self.clock

    def _op_bye(self, c: dict) -> None:
        cur = self.lives.get(c["w"])
        if cur is not None and (c.get("life") is None or cur.life == c["life"]):
            del self.lives[c["w"]]

    # -- jobs in -------------------------------------------------------------------------
    def _new_job(self, job_id: str, entry: Entry, facts: dict, submitted_at: str) -> Job:
        job = Job(job_id, self.number(), entry.id, facts.get("digest", ""), facts.get("operation"),
                  bool(facts.get("cancellable", True)), int(facts.get("attempt") or 1), submitted_at)
        self.jobs[job_id] = job
        return job

    def _op_submit(self, c: dict) -> dict:
        job = self.jobs.get(c["job_id"])
        if job is not None:
            outcome = "exists" if job.digest == c["facts"]["digest"] else "conflict"
            return {"outcome": outcome, "status": job.status, "entry": job.entry}
        entry = self.add_entry(unb64(c["raw"]), c["job_id"])
        self._new_job(c["job_id"], entry, c["facts"], c["at"])
        return {"outcome": "created", "status": "pending", "entry": entry.id}

    def _op_admit(self, c: dict) -> dict:
        """A record of the jobs topic, once per source position; a second entry of a known job
        id is a dead letter (one job id is one job)."""
        src = c["src"]
        if src in self.sources:
            return {"admitted": False}
        self.sources.add(src)
        raw = unb64(c["raw"]) if c.get("raw") is not None else b""
        entry = self.add_entry(raw, c.get("job_id"), size=int(c.get("size", len(raw))))
        job = self.jobs.get(entry.job_id) if entry.job_id is not None else None
        if job is not None and not job.unrun:
            detail = f"job {entry.job_id} is already known as entry-{job.entry}"
            self.dead_letter(entry, "duplicate_job_id", detail, c["w"])
            return {"admitted": False, "dead": "duplicate_job_id"}
        if entry.job_id is not None:
            self._new_job(entry.job_id, entry, c.get("facts") or {}, c["at"])
        return {"admitted": True, "entry": entry.id}

    # -- delivery ------------------------------------------------------------------------
    def _hand_out(self, entry: Entry, worker: str, life: str | None, lease: float, started: bool) -> dict:
        entry.deliveries += 1
        claim = Claim(entry, worker, life, self.number(), lease, self.clock + lease, started)
        self.claims[entry.id] = claim
        job = self.jobs.get(entry.job_id) if entry.job_id is not None else None
        fresh = job is not None and job.entry == entry.id and entry.job_id not in self.results
        return {"entry": entry.id, "generation": claim.generation, "deliveries": entry.deliveries,
                "job_id": entry.job_id, "started": started, "fresh": fresh, "raw": entry.raw,
                "size": entry.size}

    def _op_take(self, c: dict) -> list:
        w, life = c["w"], c["life"]
        if not self.alive(w, life):
            return []
        chosen = []
        for entry in self.waiting.values():  # oldest first; stops at n (no copy of the queue)
            if len(chosen) >= int(c["n"]):
                break
            if entry.skip.get(w, self.clock) <= self.clock:
                chosen.append(entry)
        for entry in chosen:
            del self.waiting[entry.id]
            self._mark_running(entry, w, c.get("at"))
        return [self._hand_out(entry, w, life, float(c["lease"]), started=True) for entry in chosen]

    def _mark_running(self, entry: Entry, worker: str, at: Any) -> None:
        """A take records the start (the transport's starts_on_fetch): the job is running."""
        job = self.jobs.get(entry.job_id) if entry.job_id is not None else None
        if job is not None and job.entry == entry.id:
            job.status, job.worker_id, job.started_at = "running", worker, at

    def _op_start(self, c: dict) -> bool:
        claim = self.claim_of(c["entry"], c["generation"])
        if claim is None:
            return False
        claim.started, claim.expires = True, self.clock + claim.lease
        job = self.jobs.get(claim.entry.job_id or "")
        if job is not None and job.entry == claim.entry.id:
            job.status, job.worker_id, job.started_at = "running", claim.owner, c["at"]
            job.attempt = int(c.get("attempt") or job.attempt)
        return True

    def _op_renew(self, c: dict) -> bool:
        claim = self.claim_of(c["entry"], c["generation"])
        if claim is None:
            return False
        claim.expires = self.clock + claim.lease
        return True

    def _requeue(self, claim: Claim, raw: bytes, attempt: int | None = None) -> Entry:
        old = self.claims.pop(claim.entry.id).entry
        entry = self.add_entry(raw, old.job_id)
        entry.deliveries = 0
        follow_requeue(self.jobs, old, entry.id, attempt)
        return entry

    def _op_retry(self, c: dict) -> bool:
        claim = self.claim_of(c["entry"], c["generation"])
        if claim is None:
            return False
        self._requeue(claim, unb64(c["raw"]), attempt=int(c["attempt"]))
        return True

    def _op_release(self, c: dict) -> bool:
        claim = self.claim_of(c["entry"], c["generation"])
        if claim is None:
            return False
        owner = claim.owner
        entry = self._requeue(claim, claim.entry.raw)
        entry.deliveries = claim.entry.deliveries
        if c.get("skip"):
            entry.skip[owner] = self.clock + float(c["skip"])
        return True

    def _op_let_go(self, c: dict) -> None:
        claim = self.claim_of(c["entry"], c["generation"])
        if claim is not None:
            claim.life, claim.expires = None, float("-inf")

    # -- taking over ---------------------------------------------------------------------
    def _op_reclaim(self, c: dict) -> dict:
        """Claims whose worker is gone or whose lease ran out, to the asking worker; an entry
        delivered more than max_deliveries times is a dead letter instead."""
        w, life, taken, dead = c["w"], c["life"], [], []
        if not self.alive(w, life):
            return {"taken": [], "dead": []}
        for claim in list(self.claims.values()):
            if len(taken) >= int(c["limit"]):
                break
            if claim.owner == w and claim.life == life:
                continue  # its own: its lease keeper looks after them
            if self.alive(claim.owner, claim.life) and claim.expires > self.clock:
                continue
            times = claim.entry.deliveries + 1
            if times > int(c["max_deliveries"]):
                detail = f"delivered {times} times; last owner {claim.owner}"
                self._fail_dead(claim.entry, "max_deliveries", detail, w, None)
                job = self.jobs.get(claim.entry.job_id or "")
                if job is not None and job.entry == claim.entry.id:
                    job.unrun = not claim.started
                dead.append(claim.entry.name)
                continue
            del self.claims[claim.entry.id]
            job = self.jobs.get(claim.entry.job_id or "")
            if job is not None and job.entry == claim.entry.id and job.status == "running":
                job.worker_id = w  # the status names the worker that holds it now
            handed = self._hand_out(claim.entry, w, life, float(c["lease"]), started=claim.started)
            taken.append(dict(handed, previous=claim.owner))
        return {"taken": taken, "dead": dead}

    def _fail_dead(self, entry: Entry, reason: str, detail: str, worker: str, error: dict | None) -> None:
        self.dead_letter(entry, reason, detail, worker)
        job = self.jobs.get(entry.job_id or "")
        if job is not None and job.entry == entry.id:
            job.status, job.ended = "failed", self.clock
            own = {"code": "DEAD_LETTERED", "message": f"{reason}: {detail}"}
            job.error = error if error is not None else own

    def _op_dead(self, c: dict) -> bool:
        claim = self.claim_of(c["entry"], c["generation"])
        if claim is None:
            return False
        self._fail_dead(claim.entry, c["reason"], c["detail"], c["w"], c.get("error"))
        job = self.jobs.get(claim.entry.job_id or "")
        if job is not None and job.entry == claim.entry.id and job.status == "failed":
            job.completed_at = c["at"]
        return True

    # -- outcomes ------------------------------------------------------------------------
    def _op_commit(self, c: dict) -> str:
        """Store one outcome and acknowledge (or give back, or dead-letter) its delivery, if
        the delivery is still the claim's hand-out: ``ok``, ``dead`` or ``lost``."""
        claim = self.claim_of(c["entry"], c["generation"])
        if claim is None:
            job = self.jobs.get(c.get("job_id") or "")
            return "ok" if job is not None and job.last_generation == c["generation"] else "lost"
        entry = claim.entry
        job = self.jobs.get(entry.job_id or "")
        own = job is not None and job.entry == entry.id
        without_result = c["status"] == "rejected" and c.get("result") is None
        requeue = bool(c.get("release")) or (without_result and own and c.get("job_id") == entry.job_id)
        if own and not (without_result and requeue):
            self._store_outcome(job, c)
        key = c.get("key")
        if key and c["status"] != "completed":
            self._unreserve(key, c.get("job_id"))
        if requeue:
            self._requeue(claim, entry.raw)
            return "ok"
        if without_result:
            self.dead_letter(entry, c.get("reason") or "rejected", c.get("detail") or "", c["w"])
            return "dead"
        del self.claims[entry.id]
        return "ok"

    def _store_outcome(self, job: Job, c: dict) -> None:
        if c.get("result") is not None:
            self.results[job.job_id] = c["result"]
        job.status = "completed" if c["status"] == "duplicate" else c["status"]
        job.completed_at = c.get("completed_at") or c["at"]
        job.error = c.get("error") if isinstance(c.get("error"), dict) else None
        job.cancel, job.ended, job.last_generation = False, self.clock, c["generation"]
        key = c.get("key")
        if key and c["status"] == "completed":
            self.keys[key] = KeyHold(job.job_id, "completed", c["w"], ended=self.clock)

    # -- idempotency keys ----------------------------------------------------------------
    def _op_reserve(self, c: dict) -> dict:
        hold = self.keys.get(c["key"])
        if hold is not None and hold.state == "completed" and hold.job_id in self.results:
            return {"won": False, "holder": hold.job_id, "state": "completed"}
        if hold is not None and hold.state == "running" and hold.job_id != c["job_id"] and \
                self.alive(hold.worker_id, hold.life):
            return {"won": False, "holder": hold.job_id, "state": "running"}
        self.keys[c["key"]] = KeyHold(c["job_id"], "running", c["w"], c["life"])
        return {"won": True}

    def _unreserve(self, key: str, job_id: str | None) -> None:
        hold = self.keys.get(key)
        if hold is not None and hold.job_id == job_id and hold.state == "running":
            del self.keys[key]

    def _op_unreserve(self, c: dict) -> None:
        self._unreserve(c["key"], c["job_id"])

    # -- cancel, progress, housekeeping --------------------------------------------------
    def _op_cancel(self, c: dict) -> str:
        """``moved`` when the waiting job the caller built documents for is not that entry any
        more (the caller looks again); else the answer of Transport.cancel."""
        job = self.jobs.get(c["job_id"])
        if job is None:
            return "not_found"
        if job.status in FINAL_STATUSES:
            return "finished"
        if job.entry in self.waiting:
            if job.entry != c.get("entry") or c.get("result") is None:
                return "moved"
            del self.waiting[job.entry]
            self.results[job.job_id] = c["result"]
            job.status, job.completed_at = "cancelled", c.get("completed_at") or c["at"]
            job.error = c.get("error") if isinstance(c.get("error"), dict) else None
            job.ended = self.clock
            return "cancelled"
        if not job.cancellable:
            return "not_cancellable"
        job.cancel = True
        return "cancelling"

    def _op_progress(self, c: dict) -> None:
        self.progress.setdefault(c["job_id"], []).append(c["event"])

    def _op_maintain(self, c: dict) -> None:
        """Forget finished jobs (state, result, progress, completed key) ttl after they ended."""
        forget_finished(self, self.clock, self.clock - float(c["ttl"]))

    # -- dead letters ----------------------------------------------------------------------
    def dead_row(self, name: Any) -> dict | None:
        for letter in self.dead:
            if letter["entry"] == name:
                return letter
        return None

    def _op_dead_purge(self, c: dict) -> bool:
        letter = self.dead_row(c["entry"])
        if letter is None:
            return False
        self.dead.remove(letter)
        return True

    def _op_dead_requeue(self, c: dict) -> dict:
        """Queue a dead letter's bytes again as a new entry (its job follows it) and drop the
        letter; refused when another entry is the job of its id."""
        letter = self.dead_row(c["entry"])
        if letter is None:
            return {"outcome": "not_found"}
        job_id = c.get("job_id")
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is not None and job.entry != letter["id"] and not job.unrun:
            return {"outcome": "refused", "job_id": job_id, "reason": "duplicate_job_id",
                    "detail": f"job {job_id} is known as entry-{job.entry} ({job.status})"}
        entry = self.add_entry(letter["raw"], job_id, size=letter["size"])
        if job_id is not None:
            self._new_job(job_id, entry, c.get("facts") or {}, c["at"])
        self.dead.remove(letter)
        return {"outcome": "queued", "location": entry.name, "job_id": job_id}
