"""Behaviour every transport must have (see conftest.py for how transports join)."""

import contextlib
import json
import threading
import time
import uuid

import pytest

from guestkit_worker.job import outcomes
from guestkit_worker.job.decode import decode_job_bytes
from guestkit_worker.job.errors import JobFileError, JobValidationError
from guestkit_worker.job.states import FINAL_STATUSES
from guestkit_worker.transports.base import (
    LeaseLost,
    Outcome,
    TransportObserver,
    TransportUnavailable,
)


def job(job_id=None, **execution):
    doc = {"version": "1.0", "job_id": job_id or f"contract-{uuid.uuid4().hex[:12]}",
           "created_at": "2026-11-01T00:00:00Z", "kind": "VMOperation", "operation": "system.echo",
           "payload": {"type": "system.echo.v1", "data": {}}}
    if execution:
        doc["execution"] = execution
    return doc


def result(job_id, status="completed", worker_id="contract-w1", attempt=1):
    return {"job_id": job_id, "status": status, "completed_at": "2026-11-01T00:00:01Z",
            "worker_id": worker_id, "operation": "system.echo", "execution_summary": {"attempt": attempt},
            "error": None if status == "completed" else {"code": "X", "message": "x", "phase": "execution"},
            "data": {"n": 1}}


def take(t, n=1, timeout=5.0):
    """Fetch until n deliveries came (bounded); each gets its job id and attempt read."""
    got, end = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        for d in t.fetch(n - len(got), 0.2):
            doc = json.loads(t.read(d))
            d.job_id, d.attempt = doc["job_id"], doc.get("execution", {}).get("attempt", 1)
            got.append(d)
    return got

def _a_started_job(factory, a_name, b_name, *, observers=(None, None), **job_fields):
    """Two open workers of one queue, and a job ``a`` has taken and started: (a, b, doc, delivery)."""
    a, b = (factory.make(name, **({"observer": seen} if seen else {}))
            for name, seen in zip((a_name, b_name), observers))
    a.open()
    b.open()
    doc = job(**job_fields)
    a.submit(doc)
    [delivery] = take(a)
    a.mark_started(delivery)
    return a, b, doc, delivery



def done(t, d, status="completed", **kw):
    o = Outcome(d, status, result=result(d.job_id, status), failed=status != "completed", **kw)
    t.commit([o])
    assert o.error is None, o.error
    return o


@pytest.fixture
def t(transport_factory):
    tr = transport_factory.make("contract-w1")
    tr.open()
    return tr


def test_submit_creates_one_job_per_id(t):
    doc = job()
    assert t.submit(doc).outcome == "created"
    assert t.submit(doc).outcome == "exists"
    other = dict(doc, metadata={"name": "another"})
    assert t.submit(other).outcome == "conflict"
    assert t.depth() == 1
    [d] = take(t)
    assert t.submit(doc).outcome == "exists" and t.submit(other).outcome == "conflict"  # while it is held
    done(t, d)
    assert t.submit(other).outcome == "conflict"  # and once it has a result
    assert t.depth() == 0 and t.fetch(4, 0.1) == []


def test_depth_counts_waiting_jobs(t):
    for _ in range(3):
        t.submit(job())
    assert t.depth() == 3
    [d] = take(t, 1)
    assert t.depth() == 2
    done(t, d)
    assert t.depth() == 2


def test_each_delivery_taken_once_under_four_concurrent_consumers(transport_factory):
    producer = transport_factory.make("contract-producer")
    producer.open()
    ids = [f"contract-many-{i:04d}" for i in range(60)]
    for i in ids:
        producer.submit(job(i))
    consumers = [transport_factory.make(f"contract-c{n}") for n in range(4)]
    for c in consumers:
        c.open()
    seen, lock, errors = [], threading.Lock(), []
    start = threading.Barrier(4)

    def consume(c):
        try:
            start.wait(10)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                got = c.fetch(3, 0.1)
                if not got and c.depth() == 0:
                    return
                for d in got:
                    d.job_id = json.loads(c.read(d))["job_id"]
                    with lock:
                        seen.append(d.job_id)
                    o = Outcome(d, "completed", result=result(d.job_id, worker_id=c.worker_id))
                    c.commit([o])
                    assert o.error is None
        except BaseException as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=consume, args=(c,)) for c in consumers]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert sorted(seen) == ids  # every job once, none twice
    assert all(producer.get_result(i)["status"] == "completed" for i in ids)


def test_ack_stores_the_result_and_archives(t):
    doc = job()
    t.submit(doc)
    assert t.job_status(doc["job_id"]).status == "pending"
    [d] = take(t)
    t.mark_started(d)
    assert d.started and t.job_status(doc["job_id"]).status == "running"
    done(t, d)
    assert t.get_result(doc["job_id"])["data"] == {"n": 1}
    assert t.job_status(doc["job_id"]).status == "completed"
    assert t.fetch(4, 0.1) == [] and t.depth() == 0


def test_failed_outcome_is_final(t):
    doc = job()
    t.submit(doc)
    [d] = take(t)
    done(t, d, "failed", reason={"status": "failed"})
    assert t.job_status(doc["job_id"]).status == "failed"
    assert t.fetch(4, 0.1) == []


def test_retry_rewrites_the_attempt(t):
    doc = job(max_attempts=3)
    t.submit(doc)
    [d] = take(t)
    t.mark_started(d)
    again = dict(doc, execution={"max_attempts": 3, "attempt": 2})
    t.retry(d, again)
    assert t.depth() == 1
    [d2] = take(t)
    assert d2.job_id == doc["job_id"] and d2.attempt == 2
    assert d2.started is t.starts_on_fetch  # a new delivery: started only if fetch records it
    done(t, d2)
    assert t.fetch(4, 0.1) == []


def test_release_gives_the_job_back_unchanged(t):
    doc = job()
    t.submit(doc)
    [d] = take(t)
    t.release(d)
    [d2] = take(t)
    assert json.loads(t.read(d2)) == doc


def test_release_with_a_stored_result(t):
    """A shutdown cancel: the result is stored, the job waits again."""
    doc = job()
    t.submit(doc)
    [d] = take(t)
    t.mark_started(d)
    done(t, d, "cancelled", release=True)
    assert t.get_result(doc["job_id"])["status"] == "cancelled"
    [d2] = take(t)
    assert d2.job_id == doc["job_id"]


def test_reclaim_after_a_consumer_dies(transport_factory):
    a, b = transport_factory.make("contract-dies"), transport_factory.make("contract-lives")
    a.open()
    b.open()
    started, waiting = job(), job()
    a.submit(started)
    a.submit(waiting)
    ds = take(a, 2)
    assert len(ds) == 2
    a.mark_started(next(d for d in ds if d.job_id == started["job_id"]))
    transport_factory.kill(a)
    handed = []

    def decide(delivery, dead):
        delivery.job_id = json.loads(b.read(delivery))["job_id"]
        handed.append((delivery.job_id, delivery.started, dead))
        b.release(delivery)
    end = time.monotonic() + 30
    while len(handed) < 2 and time.monotonic() < end:
        b.reclaim(decide, 10)
        time.sleep(0.05)
    # a fetched job the dead worker never marked started counts as started only where fetch
    # records the start (JobQueue.starts_on_fetch): then its attempt was used
    assert sorted(handed) == sorted([(started["job_id"], True, "contract-dies"),
                                     (waiting["job_id"], a.starts_on_fetch, "contract-dies")])
    assert sorted(d.job_id for d in take(b, 2)) == sorted([started["job_id"], waiting["job_id"]])


def test_two_racing_reservations_of_one_key_exactly_one_wins(transport_factory):
    a, b = transport_factory.make("contract-ra"), transport_factory.make("contract-rb")
    a.open()
    b.open()
    for round_ in range(10):
        key = f"key-{round_}-{uuid.uuid4().hex}"
        answers = {}
        barrier = threading.Barrier(2)

        # the round's key, answers and barrier bound now: a thread still running after its
        # join timed out must not use the next round's
        def reserve(tr, job_id, key=key, answers=answers, barrier=barrier):
            barrier.wait(10)
            answers[job_id] = tr.reserve_idempotency_key(key, job_id)
        threads = [threading.Thread(target=reserve, args=(a, "contract-job-a")),
                   threading.Thread(target=reserve, args=(b, "contract-job-b"))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        won = [j for j, r in answers.items() if r.won]
        assert len(won) == 1, answers
        lost = answers[({"contract-job-a", "contract-job-b"} - set(won)).pop()]
        assert lost.holder_job_id == won[0] and lost.state == "running"


def test_a_key_completed_is_not_reserved_again_and_a_released_key_is(t):
    doc = job(idempotency_key="contract-key")
    t.submit(doc)
    [d] = take(t)
    assert t.reserve_idempotency_key("contract-key", d.job_id).won
    done(t, d, idempotency_key="contract-key")
    r = t.reserve_idempotency_key("contract-key", "contract-other-job")
    assert not r.won and r.state == "completed" and r.holder_job_id == d.job_id
    assert r.result["data"] == {"n": 1}
    assert t.reserve_idempotency_key("contract-key-2", "contract-j1").won
    t.release_idempotency_key("contract-key-2", "contract-j1")
    assert t.reserve_idempotency_key("contract-key-2", "contract-j2").won


def test_a_reservation_of_a_dead_worker_is_taken_over(transport_factory):
    a, b = transport_factory.make("contract-ka"), transport_factory.make("contract-kb")
    a.open()
    b.open()
    assert a.reserve_idempotency_key("contract-dead-key", "contract-j1").won
    assert not b.reserve_idempotency_key("contract-dead-key", "contract-j2").won
    transport_factory.kill(a)
    assert b.reserve_idempotency_key("contract-dead-key", "contract-j2").won


def test_two_deliveries_of_one_job_id_are_never_held_at_once(transport_factory):
    """Two queued documents with one job id (a producer bypassing submit), two workers: while
    one worker holds its delivery, the other gets none it may hold (the file transport hands it
    out, refuses the hold and takes it back; Redis dead-letters the second entry); once the
    first is acknowledged, nothing of the id is held any more."""
    a, b = transport_factory.make("contract-ida"), transport_factory.make("contract-idb")
    a.open()
    b.open()
    doc = json.dumps(job("contract-same-id")).encode()
    transport_factory.inject_raw(doc, "contract-same-1")
    [da] = take(a)
    assert a.hold_job_id(da)
    transport_factory.inject_raw(doc, "contract-same-2")
    for d in take(b, timeout=1.0):
        assert d.job_id == "contract-same-id"
        assert not b.hold_job_id(d)
        b.release(d)
    done(a, da)
    for d in take(b, timeout=1.0):  # the file transport's second file; Redis has none left
        assert b.hold_job_id(d)


@pytest.mark.parametrize("poison", ["bad-json", "oversize"])
def test_poison_input_is_rejected_once_and_never_redelivered(transport_factory, poison):
    t = transport_factory.make("contract-poison", max_job_bytes=4096)
    t.open()
    data = b'{"job_id": "contract-poison-1", ' if poison == "bad-json" else b" " * 8192
    transport_factory.inject_raw(data, "contract-poison-1")
    [d] = t.fetch(1, 5.0)
    with pytest.raises(JobValidationError):
        decode_job_bytes(t.read(d), 4096)  # oversize: JobFileError from read already
    o = Outcome(d, "rejected", reason={"status": "rejected"}, failed=True)
    t.commit([o])
    assert o.error is None
    assert t.fetch(4, 0.3) == [] and t.depth() == 0


def test_oversize_is_refused_unread(transport_factory):
    t = transport_factory.make("contract-big", max_job_bytes=100)
    t.open()
    transport_factory.inject_raw(b"{" + b" " * 200 + b"}", "contract-big-1")
    [d] = t.fetch(1, 5.0)
    with pytest.raises(JobFileError):
        t.read(d)


def test_cancel(t):
    waiting, running, fixed = job(), job(), job(cancellable=False)
    for doc in (waiting, running, fixed):
        t.submit(doc)
    assert t.cancel(waiting["job_id"], outcomes.cancelled_before_start) == "cancelled"
    assert t.get_result(waiting["job_id"])["status"] == "cancelled"
    assert t.job_status(waiting["job_id"]).status == "cancelled"
    ds = take(t, 2)
    assert sorted(d.job_id for d in ds) == sorted([running["job_id"], fixed["job_id"]])
    for d in ds:
        t.mark_started(d)
    assert t.cancel(running["job_id"], outcomes.cancelled_before_start) == "cancelling"
    assert t.cancel(fixed["job_id"], outcomes.cancelled_before_start) == "not_cancellable"
    assert t.cancel_requests([running["job_id"], fixed["job_id"]]) == {running["job_id"]}
    for d in ds:
        done(t, d, "cancelled" if d.job_id == running["job_id"] else "completed")
    assert t.cancel_requests([running["job_id"]]) == set()
    assert t.cancel(running["job_id"], outcomes.cancelled_before_start) == "finished"
    assert t.cancel("contract-never-submitted", outcomes.cancelled_before_start) == "not_found"
    assert t.job_status("contract-never-submitted") is None


def test_cancel_stores_the_documents_its_caller_built(t):
    """A waiting job cancelled: the transport hands what it knows of it (QueuedJob) to the
    caller's builder and stores the result it returns as it is; it builds none of its own."""
    doc = job(max_attempts=2)
    t.submit(doc)
    asked = []

    def cancelled(queued):
        asked.append(queued)
        result, reason = outcomes.cancelled_before_start(queued)
        return dict(result, data={"built_by": "the caller"}), reason
    assert t.cancel(doc["job_id"], cancelled) == "cancelled"
    assert [(q.job_id, q.worker_id, q.operation, q.attempt or 1) for q in asked] == \
        [(doc["job_id"], "contract-w1", "system.echo", 1)]
    stored = t.get_result(doc["job_id"])
    assert stored["data"] == {"built_by": "the caller"} and stored["worker_id"] == "contract-w1"
    assert stored["error"]["code"] == "CANCELLED" and stored["error"]["phase"] == "queue"
    assert t.job_status(doc["job_id"]).status == "cancelled"
    assert t.fetch(4, 0.2) == [] and t.depth() == 0


class CountingObserver(TransportObserver):
    """Counts what a transport reports."""

    def __init__(self):
        self.counts = {}

    def _count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def jobs_reclaimed(self, n=1):
        self._count("reclaimed", n)

    def lease_lost(self):
        self._count("lease_lost")

    def dead_lettered(self, reason):
        self._count(f"dead:{reason}")


def test_takeovers_and_fenced_deliveries_are_reported_to_the_observer(transport_factory):
    """Each delivery taken over counts once on the worker that takes it; a delivery its worker
    finds taken over (its outcome refused) counts once on that worker, however often it tries."""
    seen_a, seen_b = CountingObserver(), CountingObserver()
    a, b, doc, da = _a_started_job(transport_factory, "contract-stalls", "contract-takes",
                                    observers=(seen_a, seen_b))
    transport_factory.lapse(a)
    [(db, _previous)] = _reclaim_until(b)
    assert seen_b.counts == {"reclaimed": 1}
    oa = Outcome(da, "completed", result=result(doc["job_id"], worker_id="contract-stalls"))
    for _ in range(2):
        oa.error = None
        a.commit([oa])
        assert isinstance(oa.error, LeaseLost), oa.error
    assert seen_a.counts == {"lease_lost": 1}
    done(b, db)
    assert seen_b.counts == {"reclaimed": 1}


def test_a_delivery_whose_decision_raises_is_disposed_of_with_the_workers_reason(transport_factory):
    """The worker's decision for a reclaimed delivery raises: the transport asks the worker for
    the reason (unrecoverable), disposes of the delivery for good and keeps that reason's error
    where it keeps job state; it builds none of its own."""
    a, b, doc, d = _a_started_job(transport_factory, "contract-dies", "contract-lives")
    transport_factory.kill(a)
    asked = []

    def decide(delivery, dead):
        raise RuntimeError("the decision failed")

    def unrecoverable(delivery, dead, exc):
        asked.append((dead, type(exc).__name__))
        error = outcomes.error_document("RECOVERY_FAILED", "the worker's own words", phase="recovery")
        return outcomes.reason_document(delivery.name, delivery.job_id, "failed", "contract-lives", error)
    end = time.monotonic() + 30
    while not asked and time.monotonic() < end:
        b.reclaim(decide, 10, unrecoverable=unrecoverable)
        time.sleep(0.05)
    assert asked == [("contract-dies", "RuntimeError")]
    assert b.fetch(4, 0.2) == [] and b.reclaim(_refuse, 10) == 0 and b.depth() == 0
    st = b.job_status(doc["job_id"])  # the file transport finds no job without a result by id
    if st is not None:
        assert st.status == "failed" and st.error["code"] == "RECOVERY_FAILED", st
        assert st.error["message"] == "the worker's own words"


def test_list_jobs_newest_first_in_pages(t):
    ids = []
    for i in range(5):
        doc = job(f"contract-list-{i}")
        t.submit(doc)
        ids.append(doc["job_id"])
        time.sleep(0.01)  # distinct submission times (the order under test), not a synchronisation
    [d] = take(t)
    done(t, d)
    seen, token = [], None
    for _ in range(10):
        page = t.list_jobs(limit=2, page_token=token)
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert [j.job_id for j in t.list_jobs(status="completed").jobs] == [d.job_id]
    pending = [j.job_id for j in t.list_jobs(status="pending").jobs]
    assert pending == sorted(set(ids) - {d.job_id}, reverse=True)


def test_wait_result_returns_once_committed(t):
    doc = job()
    t.submit(doc)
    [d] = take(t)
    committer = threading.Timer(0.2, done, args=(t, d))
    committer.start()
    try:
        got = t.wait_result(doc["job_id"], 30)
    finally:
        committer.join(30)
    assert got is not None and got["status"] in FINAL_STATUSES


def test_progress_events_in_order(t):
    for n in range(3):
        t.append_progress("contract-progress", {"sequence": n + 1, "phase": f"p{n}"})
    assert [e["phase"] for e in t.read_progress("contract-progress")] == ["p0", "p1", "p2"]
    assert [e["sequence"] for e in t.read_progress("contract-progress", after=2)] == [3]


def test_health_reports_each_check(t):
    checks = t.health()
    assert checks and all(ok for ok, _detail in checks.values())


def test_recovery_never_archives_a_crashed_run_with_a_shutdowns_result(transport_factory):
    """A run given back at shutdown leaves a ``cancelled`` result; the same worker runs the job
    again and dies; recovery (the real Recovery over this transport) re-queues it as attempt 2
    instead of archiving it with the shutdown's result."""
    from guestkit_worker.runtime.recovery import Recovery
    a, b, doc, d = _a_started_job(transport_factory, "contract-dies", "contract-lives", max_attempts=3)
    error = outcomes.execution_error("cancelled", None)
    back = outcomes.result_document(job_id=doc["job_id"], status="cancelled", worker_id="contract-dies",
                                    error=error)
    o = Outcome(d, "cancelled", result=back, release=True)
    a.commit([o])
    assert o.error is None
    assert outcomes.given_back(a.get_result(doc["job_id"]))
    [d] = take(a)  # the same worker runs it again ...
    a.mark_started(d)
    transport_factory.kill(a)  # ... and dies
    stored = []
    recovery = Recovery(b, lambda run, outcome: (stored.append(outcome), b.commit([outcome])),
                        worker_id="contract-lives", max_job_bytes=1 << 20, label=str)
    again, end = [], time.monotonic() + 30
    while not again and not stored and time.monotonic() < end:
        recovery.reclaim(10)
        again = take(b, 1, timeout=0.3)
    assert stored == [], "recovery archived the job with the shutdown's result"
    assert [(x.job_id, x.attempt) for x in again] == [(doc["job_id"], 2)]


def _refuse(delivery, previous):
    pytest.fail(f"{delivery.name} of live worker {previous} was taken over")


def _reclaim_until(t, n=1, timeout=30.0):
    """Reclaim with t until n deliveries were handed over (bounded); each is read and left held
    by t; [(delivery, previous owner)]."""
    handed, end = [], time.monotonic() + timeout
    while len(handed) < n and time.monotonic() < end:
        def keep(delivery, previous):
            delivery.job_id = json.loads(t.read(delivery))["job_id"]
            handed.append((delivery, previous))
        t.reclaim(keep, n - len(handed))
        if len(handed) < n:
            time.sleep(0.05)
    return handed


def test_a_renewed_claim_is_never_taken_over(transport_factory):
    a, b, doc, d = _a_started_job(transport_factory, "contract-renews", "contract-waits")
    step = (a.lease_seconds or 1.0) / 4
    for _ in range(10):  # two and a half leases, renewed every quarter of one
        assert a.extend_lease(d)
        transport_factory.advance(step)
        assert b.reclaim(_refuse, 10) == 0
    done(a, d)
    assert b.get_result(doc["job_id"])["worker_id"] == "contract-w1"


def test_a_lapsed_claim_is_taken_over_and_its_first_owner_fenced(transport_factory):
    """A worker that stopped renewing (stalled, cut off) while another took its job over can
    neither renew, nor store its outcome over the new owner's, nor queue the job again."""
    a, b, doc, da = _a_started_job(transport_factory, "contract-stalls", "contract-takes", max_attempts=3)
    transport_factory.lapse(a)
    [(db, previous)] = _reclaim_until(b)
    assert (db.job_id, db.started, previous) == (doc["job_id"], True, "contract-stalls")
    # while the new owner runs it, and again once it has stored its outcome
    oa = Outcome(da, "completed", result=result(doc["job_id"], worker_id="contract-stalls"))
    for new_owner_done in (False, True):
        assert a.extend_lease(da) is False
        oa.error = None
        a.commit([oa])
        assert isinstance(oa.error, LeaseLost), oa.error
        with pytest.raises(LeaseLost):
            a.retry(da, dict(doc, execution={"max_attempts": 3, "attempt": 2}))
        # nothing to give back: a no-op, or the error of a file that is not there
        with contextlib.suppress(LeaseLost, OSError):
            a.release(da)
        assert b.depth() == 0 and b.fetch(4, 0.2) == []
        if not new_owner_done:
            ob = Outcome(db, "completed", result=result(doc["job_id"], worker_id="contract-takes"))
            b.commit([ob])
            assert ob.error is None
    assert b.get_result(doc["job_id"])["worker_id"] == "contract-takes"
    assert b.job_status(doc["job_id"]).status == "completed"


def test_a_commit_the_store_refuses_keeps_the_delivery(transport_factory):
    """The outcome gets an OSError (the worker's committer tries those again) and the delivery
    stays with its worker: not queued again, not taken over, stored by the next commit."""
    a, b, doc, d = _a_started_job(transport_factory, "contract-stores", "contract-other")
    o = Outcome(d, "completed", result=result(doc["job_id"], worker_id="contract-stores"))
    transport_factory.break_store()
    try:
        a.commit([o])
    finally:
        transport_factory.mend_store()
    assert isinstance(o.error, OSError) and not isinstance(o.error, LeaseLost), o.error
    assert a.get_result(doc["job_id"]) is None
    assert a.extend_lease(d)
    assert b.fetch(4, 0.2) == [] and b.reclaim(_refuse, 10) == 0
    o.error = None  # as the committer does before it commits an outcome again
    a.commit([o])
    assert o.error is None
    assert b.get_result(doc["job_id"])["worker_id"] == "contract-stores"
    assert b.job_status(doc["job_id"]).status == "completed" and b.depth() == 0


def test_storage_trouble_is_transport_unavailable_or_oserror(transport_factory):
    """base.py: storage trouble raises TransportUnavailable (or OSError): the API answers both
    with 503 and the worker backs off; nothing else (a client library's own error, a KeyError)
    may escape.  commit raises nothing and marks its outcome with an OSError; health says so."""
    t = transport_factory.make("contract-outage")
    t.open()
    held, waiting = job(idempotency_key="contract-outage-key"), job()
    t.submit(held)
    [d] = take(t)
    t.mark_started(d)
    t.submit(waiting)
    calls = {
        "submit": lambda: t.submit(job()), "fetch": lambda: t.fetch(1, 0.1), "depth": t.depth,
        "get_result": lambda: t.get_result(held["job_id"]),
        "wait_result": lambda: t.wait_result(held["job_id"], 0.1),
        "job_status": lambda: t.job_status(held["job_id"]), "list_jobs": lambda: t.list_jobs(limit=2),
        "cancel": lambda: t.cancel(waiting["job_id"], outcomes.cancelled_before_start),
        "cancel_requests": lambda: t.cancel_requests([held["job_id"]]),
        "reserve": lambda: t.reserve_idempotency_key("contract-outage-key", held["job_id"]),
        "release_key": lambda: t.release_idempotency_key("contract-other-key", held["job_id"]),
        "append_progress": lambda: t.append_progress(held["job_id"], {"sequence": 1}),
        "read_progress": lambda: t.read_progress(held["job_id"]), "extend_lease": lambda: t.extend_lease(d),
        "reclaim": lambda: t.reclaim(_refuse, 10), "maintain": t.maintain, "describe": t.describe,
    }
    o = Outcome(d, "completed", result=result(held["job_id"]))
    wrong = []
    transport_factory.break_store()
    try:
        for name, call in calls.items():
            try:
                call()
            except (TransportUnavailable, OSError):
                pass
            except Exception as exc:  # reported below, with the others
                wrong.append(f"{name}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
        checks = t.health()
        t.commit([o])
    finally:
        transport_factory.mend_store()
    assert wrong == []
    assert isinstance(o.error, OSError), o.error
    assert not all(ok for ok, _detail in checks.values()), checks
    o.error = None
    t.commit([o])
    assert o.error is None and t.get_result(held["job_id"])["status"] == "completed"
    assert all(ok for ok, _detail in t.health().values())


def test_close_is_idempotent_and_leaves_held_jobs_to_the_others(transport_factory):
    """After close() a transport hands out nothing more (a thread still looking at shutdown is
    harmless); what it held goes to another worker by reclaim (a lease later where leased)."""
    a, b = transport_factory.make("contract-closes"), transport_factory.make("contract-stays")
    a.open()
    b.open()
    held, waiting = job("contract-close-1"), job("contract-close-2")
    a.submit(held)
    a.submit(waiting)
    [d] = take(a)
    assert d.job_id == held["job_id"]
    a.mark_started(d)
    a.close()
    a.close()
    assert a.fetch(4, 0.2) == [] and a.reclaim(_refuse, 10) == 0
    [(again, previous)] = _reclaim_until(b)
    assert (again.job_id, again.started, previous) == (held["job_id"], True, "contract-closes")
    [w] = take(b)
    assert w.job_id == waiting["job_id"]
    for x in (again, w):
        done(b, x)
    assert b.depth() == 0


def test_maintain_keeps_everything_live(transport_factory):
    """Housekeeping (every few minutes, and at start) never drops a waiting job, a held one, a
    fresh result, a reservation or progress events, and may run twice in a row."""
    t, other = transport_factory.make("contract-tidy"), transport_factory.make("contract-tidy2")
    t.open()
    other.open()
    ids = [f"contract-maint-{n}" for n in (1, 2, 3)]
    for i in ids:
        t.submit(job(i))
    finished, held = take(t, 2)
    assert [finished.job_id, held.job_id] == ids[:2]
    done(t, finished)
    t.mark_started(held)
    assert t.reserve_idempotency_key("contract-maint-key", held.job_id).won
    t.append_progress(held.job_id, {"sequence": 1, "phase": "p"})
    t.maintain()
    t.maintain()
    other.maintain()
    assert t.depth() == 1
    assert [j.status for j in map(t.job_status, ids)] == ["completed", "running", "pending"]
    assert t.get_result(finished.job_id)["status"] == "completed"
    assert other.reserve_idempotency_key("contract-maint-key", "contract-else").state == "running"
    assert t.read_progress(held.job_id)[0]["phase"] == "p"
    assert t.extend_lease(held)
    done(t, held, idempotency_key="contract-maint-key")
    [last] = take(t)
    assert last.job_id == ids[2]


def _seconds(stamp_text):
    from datetime import datetime
    return datetime.fromisoformat(stamp_text.replace("Z", "+00:00")).timestamp()


def test_submitted_at_is_when_the_job_was_submitted_from_submit_to_its_end(t):
    """``submitted_at`` is the real time of the submission (not the document's ``created_at``,
    a producer's own field), the same while the job waits, runs, after a retry and once done."""
    doc = job(max_attempts=3)  # created_at 2026-11-01
    before = time.time()
    t.submit(doc)
    after = time.time()
    first = t.job_status(doc["job_id"]).submitted_at
    assert before - 1 <= _seconds(first) <= after + 1, (first, before, after)
    [d] = take(t)
    t.mark_started(d)
    running = t.job_status(doc["job_id"])
    assert running.submitted_at == first and _seconds(running.started_at) >= _seconds(first) - 1
    t.retry(d, dict(doc, execution={"max_attempts": 3, "attempt": 2}))
    assert t.job_status(doc["job_id"]).submitted_at == first
    [d2] = take(t)
    done(t, d2)
    assert t.job_status(doc["job_id"]).submitted_at == first
