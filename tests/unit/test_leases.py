"""The lease keeper (runtime/leases.py) with the in-memory transport's leases on the injected
clock: a renewed delivery is never taken over, one not renewed in time is, and a run whose lease
was lost is stopped and its outcome dropped (the job belongs to the worker that took it over)."""

import os
import tempfile

from runtimekit import Rig, job

LEASE = 10.0


def _two_workers(tmp_path):
    a = Rig(tmp_path, "unit-w1", lease_seconds=LEASE)
    return a, Rig(tmp_path, "unit-w2", broker=a.broker, lease_seconds=LEASE)


def test_the_keeper_renews_every_quarter_lease(tmp_path):
    a, _ = _two_workers(tmp_path)
    assert a.leases.interval == LEASE / 4


def test_a_renewed_delivery_is_not_taken_over_and_one_not_renewed_is(tmp_path):
    a, b = _two_workers(tmp_path)
    job_id = a.submit(job(operation="unit.wait", max_attempts=2))
    a.start_next("unit.wait")
    a.clock.advance(8)
    a.leases.renew_all()
    a.clock.advance(8)  # 16 s since the start, 8 since the renewal
    assert b.recovery.reclaim() == 0 and b.status(job_id) == "running"
    a.clock.advance(2.5)  # 10.5 s since the renewal
    assert b.recovery.reclaim() == 1
    assert [(d["job_id"], d["execution"]["attempt"]) for d in b.waiting()] == [(job_id, 2)]
    a.handler("unit.wait").finish()
    a.join()


def test_a_lost_lease_stops_the_run_and_drops_its_outcome(tmp_path):
    a, b = _two_workers(tmp_path)
    job_id = a.submit(job(operation="unit.wait", max_attempts=2))
    a.start_next("unit.wait")
    a.clock.advance(LEASE + 1)
    assert b.recovery.reclaim() == 1  # re-queued as attempt 2 by B
    run = a.run_of(job_id)
    a.leases.renew_all()
    assert run.stop_reason == "lease_lost" and run.ctx.cancelled
    a.join()  # the handler honours the stop
    assert a.table.outcomes() == {} and a.table.runs() == [] and a.table.in_hand == 0
    assert a.result(job_id) is None and [d["execution"]["attempt"] for d in b.waiting()] == [2]
    a.leases.renew_all()  # nothing left to renew: no second stop, no error
    b.handler("unit.wait").finish()
    b.run_next()
    result = b.result(job_id)
    assert result["worker_id"] == "unit-w2" and result["execution_summary"]["attempt"] == 2



def _lapse(rig, files):
    """A's claim runs out: for memory its lease on the clock, for files its worker's lock (the
    lock file replaced by one nobody locks, as when its process died)."""
    rig.clock.advance(LEASE + 1)
    if files is not None:
        processing = os.path.join(files, "jobs", ".processing")
        fd, fresh = tempfile.mkstemp(prefix=".unlocked-", dir=processing)
        os.close(fd)
        os.replace(fresh, os.path.join(processing, rig.cfg.worker_id + ".lock"))


def test_an_outcome_refused_after_a_takeover_leaves_the_key_to_the_new_owner(tmp_path):
    """A's run outlives its lease unnoticed (no renewal ran); B takes the job over and holds its
    idempotency key for attempt 2; then A's commit is refused (LeaseLost): A drops its outcome
    and does not release B's key."""
    a, b = _two_workers(tmp_path)
    job_id = a.submit(job(operation="unit.wait", max_attempts=2, idempotency_key="key-held"))
    a.start_next("unit.wait")
    _lapse(a, None)
    assert b.recovery.reclaim() == 1
    b.start_next("unit.wait")
    a.handler("unit.wait").finish()
    a.join()
    other = b.transport.reserve_idempotency_key("key-held", "another-job-0001")
    assert not other.won and other.holder_job_id == job_id  # before: won, B's hold was deleted
    assert a.table.outcomes() == {} and a.table.in_hand == 0
    b.handler("unit.wait").finish()
    b.join()
    assert b.result(job_id)["execution_summary"]["attempt"] == 2


def test_a_file_worker_refused_after_a_takeover_lets_go_of_the_job_id(tmp_path):
    """Files: A's claim is taken over while it runs; A's commit is refused (LeaseLost) and A
    lets go of the job id, so B runs attempt 2 at once (before: A held the id until its process
    ended, and B gave attempt 2 back again and again)."""
    queue = str(tmp_path / "q")
    a = Rig(tmp_path, "unit-w1", files=queue)
    b = Rig(tmp_path, "unit-w2", clock=a.clock, files=queue)
    job_id = a.submit(job(operation="unit.wait", max_attempts=2, idempotency_key="key-held"))
    a.start_next("unit.wait")
    _lapse(a, queue)
    assert b.recovery.reclaim() == 1
    a.handler("unit.wait").finish()
    a.join()
    assert a.table.outcomes() == {} and a.table.in_hand == 0
    b.start_next("unit.wait")  # its run begins: the job id is free
    b.handler("unit.wait").finish()
    b.join()
    result = b.result(job_id)
    assert result["status"] == "completed" and result["execution_summary"]["attempt"] == 2
