"""In-process tests of the worker's parts, closer to the code than the subprocess tests:
the watchdog (injected clock, no sleeps), the committer and recovery (against stub
transports), the lease keeper, and cancellation that a handler cannot swallow."""

import json
import os
import threading
import time
import types

import pytest
from conftest import make_job, wait_for, write_job
from prometheus_client import CollectorRegistry

from guestkit_worker.handlers import default_registry
from guestkit_worker.handlers.base import Handler, HandlerResult
from guestkit_worker.job.errors import JobCancelled
from guestkit_worker.runtime.committer import Committer
from guestkit_worker.runtime.config import WorkerConfig
from guestkit_worker.runtime.leases import LeaseKeeper
from guestkit_worker.runtime.recovery import Recovery
from guestkit_worker.runtime.watchdog import Watchdog
from guestkit_worker.runtime.worker import Worker
from guestkit_worker.transports.base import Delivery, Outcome

# -- watchdog -----------------------------------------------------------------------------

class _Run:
    def __init__(self, deadline):
        self.ctx = types.SimpleNamespace(deadline=deadline)
        self.stop_at = self.stop_reason = None
        self.finalized = False


def test_watchdog_stops_at_the_deadline_and_abandons_after_the_grace():
    now = [100.0]
    late, early, forever = _Run(110.0), _Run(103.0), _Run(None)
    stops, abandoned = [], []

    def stop(run, reason):
        stops.append((run, reason))
        run.stop_reason, run.stop_at = reason, now[0]

    wd = Watchdog(lambda: [late, early, forever], stop, abandoned.append, clock=lambda: now[0], grace=5.0)
    assert wd.tick() == 101.0 and stops == []  # looks again within a second
    now[0] = 103.0
    assert wd.tick() == 104.0 and stops == [(early, "timeout")]
    now[0] = 107.9
    assert wd.tick() == 108.0 and abandoned == []  # grace: 103 + 5
    now[0] = 108.0
    wd.tick()
    assert abandoned == [early]
    early.finalized = True
    now[0] = 110.0
    wd.tick()
    assert stops == [(early, "timeout"), (late, "timeout")] and abandoned == [early]
    assert all(run is not forever for run, _ in stops)


def test_watchdog_abandons_a_run_stopped_for_another_reason():
    now = [0.0]
    run = _Run(None)
    run.stop_reason, run.stop_at = "requested", 0.0
    abandoned = []
    wd = Watchdog(lambda: [run], lambda r, why: None, abandoned.append, clock=lambda: now[0], grace=2.0)
    wd.tick()
    assert abandoned == []
    now[0] = 2.0
    wd.tick()
    assert abandoned == [run]


# -- committer ----------------------------------------------------------------------------

def test_committer_batches_retries_unstored_outcomes_and_survives_a_transport_bug():
    batches, stored, errors, failed = [], [], [], []
    gate = threading.Event()
    tries = {}

    def commit(outcomes):
        gate.wait(10)
        batches.append([o.status for o in outcomes])
        for o in outcomes:
            n = tries[o.delivery.name] = tries.get(o.delivery.name, 0) + 1
            if o.status == "full" or (o.status == "once" and n == 1):  # disk full: always, or the first time
                o.error = OSError(28, "No space left on device")
            if o.status == "bug":
                raise RuntimeError("transport bug")

    c = Committer(commit, lambda run, o: stored.append(run), lambda run, o: failed.append(run), backlog=8,
                  on_error=lambda run, o: errors.append(run), retry_delays=(0.01, 0.01))
    c.start()
    for n, status in enumerate(["completed", "once", "completed", "full"]):
        c.put(n, Outcome(Delivery(f"d{n}"), status))
    gate.set()
    wait_for(lambda: c.pending == 0, timeout=10, what="batch stored")
    assert sorted(stored) == [0, 1, 2] and failed == [3]
    # committed again after a pause, up to the last delay
    assert tries == {"d0": 1, "d1": 2, "d2": 1, "d3": 3}
    assert errors == [1, 3, 3, 3]  # each failed try reported
    assert len(batches[0]) >= 2  # grouped while the first waited
    c.put(4, Outcome(Delivery("d4"), "bug"))
    wait_for(lambda: c.pending == 0, timeout=10, what="bug handled")
    assert failed == [3, 4] and c.alive()  # a bug is not retried, and the thread survives it
    c.put(5, Outcome(Delivery("d5"), "completed"))  # still committing after the bug
    wait_for(lambda: 5 in stored, timeout=10, what="stored after the bug")
    assert c.close(10)
    caller = []
    c2 = Committer(lambda outcomes: caller.append(threading.current_thread().name),
                   lambda run, o: None, lambda run, o: None, backlog=8)
    c2.put(6, Outcome(Delivery("d6"), "completed"))  # never started: stored in the caller's thread
    assert caller == [threading.current_thread().name]


# -- recovery -----------------------------------------------------------------------------

class StubQueue:
    """Just enough of a transport for Recovery: documents by delivery name."""

    def __init__(self, docs, results=None, broken_results=()):
        self.docs, self.results, self.broken = docs, results or {}, set(broken_results)
        self.released, self.retried, self.committed = [], [], []

    def read(self, d):
        return self.docs[d.name]

    def release(self, d, not_for_me=False):
        self.released.append(d.name)

    def retry(self, d, doc):
        self.retried.append((d.name, doc["execution"]["attempt"]))

    def get_result(self, job_id):
        if job_id in self.broken:
            raise RuntimeError("result store answered nonsense")
        return self.results.get(job_id)

    def commit(self, outcomes):
        self.committed += outcomes


def _doc(job_id, **execution):
    return json.dumps(make_job(job_id, execution=execution)).encode()


def _recover(queue, name, started=True, dead="dead-w"):
    stored = []
    rec = Recovery(queue, lambda run, o: stored.append(o), worker_id="me", max_job_bytes=1 << 20,
                   label=lambda op: op)
    rec.decide(Delivery(name, started=started), dead)
    return stored


def test_recovery_decides_each_case():
    q = StubQueue({
        "waiting": _doc("rec-waiting-1"), "again": _doc("rec-again-01", max_attempts=3),
        "crashed": _doc("rec-crashed-1"), "stored": _doc("rec-stored-01"), "junk": b"{not json",
        "broken": _doc("rec-broken-01")},
        results={"rec-stored-01": {"job_id": "rec-stored-01", "status": "completed", "worker_id": "dead-w",
                                   "execution_summary": {"attempt": 1}, "completed_at": "x"}},
        broken_results={"rec-broken-01"})
    assert _recover(q, "waiting", started=False) == [] and q.released == ["waiting"]
    assert _recover(q, "junk") == [] and q.released == ["waiting", "junk"]  # re-admitted, rejected then
    assert _recover(q, "again") == [] and q.retried == [("again", 2)]
    [crash] = _recover(q, "crashed")
    assert crash.status == "failed" and crash.failed and crash.result["error"]["code"] == "WORKER_CRASHED"
    assert crash.reason["worker_id"] == "me" and crash.reason["at"]  # reasons say who and when
    [kept] = _recover(q, "stored")
    assert kept.status == "completed" and kept.staged and kept.result["worker_id"] == "dead-w"
    assert _recover(q, "broken") == []  # not stored as an outcome: committed as failed directly
    [failed] = q.committed
    assert (failed.reason["error"]["code"] == "RECOVERY_FAILED"
            and "RuntimeError" in failed.reason["error"]["message"])


# -- leases -------------------------------------------------------------------------------

def test_lease_keeper_stops_a_run_whose_lease_is_lost():
    kept, lost = _Run(None), _Run(None)
    kept.delivery, lost.delivery = Delivery("kept"), Delivery("lost")
    kept.job_id, lost.job_id = "kept", "lost"
    transport = types.SimpleNamespace(extend_lease=lambda d: d.name == "kept")
    stopped = []
    keeper = LeaseKeeper(transport, lambda: [kept, lost], lambda run, why: stopped.append((run, why)), 8.0)
    assert keeper.interval == 2.0
    keeper.renew_all()
    assert stopped == [(lost, "lease_lost")]


# -- cancellation a handler cannot swallow ------------------------------------------------

class SwallowingHandler(Handler):
    """Catches every Exception around its unit of work, as careless handlers do."""
    name = "test.swallow"
    operations = ("test.swallow",)
    payload_types = ("test.swallow.v1",)

    def __init__(self):
        self.left_by = None

    def execute(self, context, data):
        try:
            while True:
                try:
                    context.check_cancelled()
                    context.cancel_event.wait(0.05)
                except Exception:  # noqa: BLE001 - the point of the test
                    pass
        except BaseException as exc:
            self.left_by = type(exc).__name__
            raise
        return HandlerResult(data={})


def test_a_handler_catching_exception_is_still_cancelled(dirs):
    handlers = default_registry(load_plugins=False)
    swallow = SwallowingHandler()
    handlers.register(swallow)
    write_job(dirs.jobs, make_job("swallow-0001", "test.swallow", execution={"timeout_seconds": 1}))
    cfg = WorkerConfig(jobs_dir=dirs.jobs, results_dir=dirs.results, work_dir=dirs.work,
                       worker_id="swallow-w", once=True, durable=False, poll_interval=0.05)
    w = Worker(cfg, handlers=handlers, registry=CollectorRegistry())
    w.open()
    assert w.run() == 1
    assert swallow.left_by == JobCancelled.__name__
    assert w.stuck_threads == 0  # the handler's thread returned: nothing was abandoned
    result = dirs.result("swallow-0001")
    assert result["status"] == "timeout" and result["error"]["code"] == "TIMEOUT"


# -- the worker's threads -----------------------------------------------------------------

# the thread ends on purpose
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_watchdog_pass_that_raises_is_survived_and_a_dead_thread_makes_health_fail(dirs):
    cfg = WorkerConfig(jobs_dir=dirs.jobs, results_dir=dirs.results, work_dir=dirs.work,
                       worker_id="threads-w", durable=False, poll_interval=0.05)
    w = Worker(cfg, handlers=default_registry(load_plugins=False), registry=CollectorRegistry())
    w.open()
    runner = threading.Thread(target=w.run)
    runner.start()
    try:
        wait_for(lambda: w.health()[0], timeout=10, what="healthy")
        calls = []

        def flaky_clock():  # the first pass fails with a bug, the ones after work
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in one pass")
            return time.monotonic()
        w.watchdog._clock = flaky_clock
        w.watchdog.notify(0.0)
        wait_for(lambda: len(calls) >= 3, timeout=10, what="passes after the failing one")
        assert w.health()[0]

        def fatal_clock():
            raise SystemExit("the watchdog thread ends")
        w.watchdog._clock = fatal_clock
        w.watchdog.notify(0.0)
        wait_for(lambda: not w.health()[0], timeout=10, what="unhealthy")
        healthy, body = w.health()
        assert body["checks"]["threads"] == {"ok": False, "detail": "stopped: watchdog"}
    finally:
        w.request_stop()
        runner.join(30)
    assert not runner.is_alive()


class CountingHandler(Handler):
    """Records how many jobs run at once and how many deliveries the worker holds meanwhile."""
    name = "test.count"
    operations = ("test.count",)
    payload_types = ("test.count.v1",)

    def __init__(self, table):
        self.table, self.lock = table, threading.Lock()
        self.running = self.most_running = self.most_in_hand = 0

    def execute(self, context, data):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.most_in_hand = max(self.most_in_hand, self.table.in_hand)
        time.sleep(0.005)
        with self.lock:
            self.running -= 1
        return HandlerResult(data=data)


def test_job_threads_take_their_next_job_themselves_within_the_slots(dirs):
    """A job thread that has finished a job claims the next one itself (no hand-over through
    the consumer thread), in the slot it holds: never more deliveries in hand than
    --max-concurrent, every job runs once, and the table's counts end at zero."""
    for i in range(40):
        write_job(dirs.jobs, make_job(f"self-take-{i:04d}", "test.count"))
    cfg = WorkerConfig(jobs_dir=dirs.jobs, results_dir=dirs.results, work_dir=dirs.work,
                       worker_id="self-take-w", once=True, durable=False, poll_interval=0.05,
                       max_concurrent=3)
    handlers = default_registry(load_plugins=False)
    w = Worker(cfg, handlers=handlers, registry=CollectorRegistry())
    counting = CountingHandler(w.table)
    handlers.register(counting)
    w.open()
    claimed_by, real_fetch = {}, w.transport.fetch

    def recording_fetch(max_count, timeout):  # the real transport's fetch, its caller noted
        got = real_fetch(max_count, timeout)
        kind = "job" if threading.current_thread().name.startswith("job") else threading.current_thread().name
        claimed_by[kind] = claimed_by.get(kind, 0) + len(got)
        return got
    w.transport.fetch = recording_fetch
    assert w.run() == 0
    archived = sorted(os.listdir(os.path.join(dirs.jobs, "done")))
    assert archived == [f"self-take-{i:04d}.json" for i in range(40)]
    assert all(dirs.result(f"self-take-{i:04d}")["status"] == "completed" for i in range(40))
    assert sum(claimed_by.values()) == 40 and claimed_by.get("job", 0) > 0, claimed_by
    assert 1 <= counting.most_running <= 3 and counting.most_in_hand <= 3
    assert (w.table.in_hand, w.table.not_started) == (0, 0)
