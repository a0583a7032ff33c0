"""The committer (runtime/committer.py) on the in-memory transport, its thread running and its
retry pauses on an injected clock: outcomes handed over while a commit runs go together in the
next one; an outcome the store refuses keeps its delivery and is committed again once its pause
is over on the clock (given up when the pauses are used); closing stores everything handed
over, and afterwards outcomes are stored in the caller's thread."""

import threading

from conftest import wait_for
from runtimekit import BOUND, Clock, Rig, job

from guestkit_worker.runtime.committer import Committer
from guestkit_worker.transports.base import Outcome


class Calls:
    """The committer's callbacks, recorded; commit goes to the transport, and the first
    commit waits for ``gate`` when ``hold_first``."""

    def __init__(self, transport, *, hold_first=False, fail=None):
        self.transport, self.hold_first, self.fail = transport, hold_first, fail
        self.batches, self.stored, self.errors, self.failed, self.idle = [], [], [], [], 0
        self.threads = []
        self.gate, self.committing = threading.Event(), threading.Event()

    def commit(self, outcomes):
        self.batches.append([o.delivery.job_id for o in outcomes])
        if self.hold_first and len(self.batches) == 1:
            self.committing.set()
            assert self.gate.wait(BOUND)
        if self.fail is not None:
            raise self.fail
        self.transport.commit(outcomes)

    def on_stored(self, run, outcome):
        self.stored.append(run)
        self.threads.append(threading.current_thread().name)

    def on_error(self, run, outcome):
        self.errors.append((run, type(outcome.error).__name__))

    def on_failed(self, run, outcome):
        self.failed.append(run)

    def on_idle(self):
        self.idle += 1


def _setup(tmp_path, n, *, delays=(5.0, 10.0), **calls_options):
    clock = Clock()
    rig = Rig(tmp_path, clock=clock)
    ids = [rig.submit(job()) for _ in range(n)]
    outcomes = []
    for d in rig.transport.fetch(n, 0.0):
        d.job_id = d.job_id or d.name
        outcomes.append(Outcome(d, "completed", result={"job_id": d.job_id, "status": "completed"}))
    calls = Calls(rig.transport, **calls_options)
    committer = Committer(calls.commit, calls.on_stored, calls.on_failed, on_error=calls.on_error,
                          on_idle=calls.on_idle, backlog=8, retry_delays=delays, clock=clock)
    return rig, ids, outcomes, calls, committer


def test_outcomes_handed_over_during_a_commit_go_together_in_the_next(tmp_path):
    rig, ids, outcomes, calls, committer = _setup(tmp_path, 6, hold_first=True)
    committer.start()
    committer.put(ids[0], outcomes[0])
    assert calls.committing.wait(BOUND)
    for job_id, outcome in zip(ids[1:], outcomes[1:]):
        committer.put(job_id, outcome)
    assert committer.pending == 6
    calls.gate.set()
    wait_for(lambda: len(calls.stored) == 6, timeout=BOUND, what="six outcomes stored")
    assert calls.batches == [ids[:1], ids[1:]] and calls.stored == ids
    assert all(rig.status(j) == "completed" for j in ids) and committer.pending == 0
    wait_for(lambda: calls.idle >= 1, timeout=BOUND, what="on_idle")
    assert set(calls.threads) == {"committer"} and committer.close(BOUND)


def test_an_outcome_the_store_refuses_keeps_its_delivery_and_is_committed_after_its_pause(tmp_path):
    rig, ids, outcomes, calls, committer = _setup(tmp_path, 1)
    other = Rig(tmp_path, "unit-w2", broker=rig.broker)
    rig.broker.set_unavailable("unit test")
    committer.start()
    committer.put(ids[0], outcomes[0])
    wait_for(lambda: calls.errors, timeout=BOUND, what="the refused commit")
    assert calls.errors == [(ids[0], "MemoryUnavailable")] and calls.stored == [] and committer.pending == 1
    rig.broker.set_unavailable(None)
    assert other.recovery.reclaim() == 0 and rig.status(ids[0]) == "pending"  # still held by its worker
    rig.clock.advance(4.9)
    assert len(calls.batches) == 1  # the pause is not over on the clock
    rig.clock.advance(0.1)
    wait_for(lambda: calls.stored, timeout=BOUND, what="the second commit")
    assert len(calls.batches) == 2 and rig.status(ids[0]) == "completed" and calls.failed == []
    assert committer.pending == 0 and committer.close(BOUND)


def test_an_outcome_still_refused_when_its_pauses_are_used_is_given_up(tmp_path):
    rig, ids, outcomes, calls, committer = _setup(tmp_path, 1, delays=(1.0,))
    rig.broker.set_unavailable("unit test")
    committer.start()
    committer.put(ids[0], outcomes[0])
    wait_for(lambda: len(calls.errors) == 1, timeout=BOUND, what="the first refusal")
    rig.clock.advance(1.0)
    wait_for(lambda: calls.failed, timeout=BOUND, what="giving up")
    assert len(calls.errors) == 2 and calls.failed == ids and calls.stored == [] and committer.pending == 0
    rig.broker.set_unavailable(None)
    assert rig.status(ids[0]) == "pending" and committer.close(BOUND)


def test_a_commit_that_raises_gives_its_batch_up_at_once_and_the_thread_goes_on(tmp_path):
    rig, ids, outcomes, calls, committer = _setup(tmp_path, 2, fail=RuntimeError("transport bug"))
    committer.start()
    committer.put(ids[0], outcomes[0])
    wait_for(lambda: calls.failed, timeout=BOUND, what="the batch given up")
    assert calls.errors == [(ids[0], "RuntimeError")] and committer.alive()
    calls.fail = None
    committer.put(ids[1], outcomes[1])
    wait_for(lambda: calls.stored, timeout=BOUND, what="the next outcome")
    assert calls.stored == [ids[1]] and committer.close(BOUND)


def test_close_stores_what_was_handed_over_then_stores_in_the_callers_thread(tmp_path):
    rig, ids, outcomes, calls, committer = _setup(tmp_path, 5, hold_first=True)
    committer.start()
    committer.put(ids[0], outcomes[0])
    assert calls.committing.wait(BOUND)
    for job_id, outcome in zip(ids[1:4], outcomes[1:4]):
        committer.put(job_id, outcome)
    closed = []
    closer = threading.Thread(target=lambda: closed.append(committer.close(BOUND)))
    closer.start()
    calls.gate.set()
    closer.join(BOUND)
    assert closed == [True] and calls.stored == ids[:4] and committer.pending == 0
    committer.put(ids[4], outcomes[4])
    assert calls.stored == ids and calls.threads[-1] == threading.current_thread().name
    assert all(rig.status(j) == "completed" for j in ids)


def test_close_gives_an_outcome_waiting_for_its_pause_one_last_try(tmp_path):
    rig, ids, outcomes, calls, committer = _setup(tmp_path, 1, delays=(60.0,))
    rig.broker.set_unavailable("unit test")
    committer.start()
    committer.put(ids[0], outcomes[0])
    wait_for(lambda: calls.errors, timeout=BOUND, what="the refused commit")
    rig.broker.set_unavailable(None)
    assert committer.close(BOUND)  # the clock never moved: the pause is cut short by the close
    assert calls.stored == ids and rig.status(ids[0]) == "completed" and calls.failed == []
