"""Recovery (runtime/recovery.py): what a live worker decides for each job a dead worker of the
same in-memory queue held.  A started job runs again as attempt + 1 while attempts are left,
else fails with WORKER_CRASHED; a job not started, or not a valid job, goes back to the queue
as it was; the dead worker's late outcome is never stored."""

from runtimekit import Rig, job


def _two_workers(tmp_path):
    a = Rig(tmp_path, "unit-w1")
    return a, Rig(tmp_path, "unit-w2", broker=a.broker)


def test_a_started_job_of_a_dead_worker_runs_again_as_attempt_plus_one(tmp_path):
    a, b = _two_workers(tmp_path)
    job_id = a.submit(job(operation="unit.wait", max_attempts=2))
    a.start_next("unit.wait")
    a.broker.declare_dead("unit-w1")
    assert b.recovery.reclaim() == 1
    [doc] = b.waiting()
    assert doc["job_id"] == job_id and doc["execution"] == {"max_attempts": 2, "attempt": 2}
    assert b.status(job_id) == "pending" and b.transport.job_status(job_id).attempt == 2
    b.handler("unit.wait").finish()
    b.run_next()
    result = b.result(job_id)
    assert result["status"] == "completed" and result["worker_id"] == "unit-w2"
    assert result["execution_summary"]["attempt"] == 2
    a.handler("unit.wait").finish()  # the dead worker's handler returns after all: its outcome is fenced
    a.join()  # and dropped, as when its lease keeper finds the lease lost: the job is B's
    assert b.result(job_id) == result and a.table.outcomes() == {} and a.table.in_hand == 0


def test_a_started_job_without_attempts_left_fails_with_worker_crashed(tmp_path):
    a, b = _two_workers(tmp_path)
    job_id = a.submit(job(operation="unit.wait"))
    a.start_next("unit.wait")
    a.broker.declare_dead("unit-w1")
    assert b.recovery.reclaim() == 1
    result = b.result(job_id)
    assert result["status"] == "failed" and result["worker_id"] == "unit-w2"
    assert result["error"]["code"] == "WORKER_CRASHED"
    assert result["error"]["message"] == "worker unit-w1 died while running attempt 1 of 1; no attempts left"
    assert b.status(job_id) == "failed" and b.transport.depth() == 0
    assert b.table.outcomes() == {"failed": 1} and b.jobs_total("unit.wait", "failed") == 1
    a.handler("unit.wait").finish()
    a.join()


def test_a_job_taken_and_not_started_goes_back_to_the_queue_unchanged(tmp_path):
    a, b = _two_workers(tmp_path)
    job_id = a.submit(job(max_attempts=1))
    a.take()
    a.broker.declare_dead("unit-w1")
    assert b.recovery.reclaim() == 1
    [doc] = b.waiting()
    assert doc["job_id"] == job_id and doc["execution"] == {"max_attempts": 1}  # the attempt is not spent
    b.run_next()
    assert b.result(job_id)["status"] == "completed" and b.result(job_id)["execution_summary"]["attempt"] == 1


def test_an_invalid_job_a_dead_worker_started_is_queued_again_and_then_rejected(tmp_path):
    a, b = _two_workers(tmp_path)
    job_id = a.submit(dict(job(), execution={"priority": 12}))
    a.transport.mark_started(a.take())
    a.broker.declare_dead("unit-w1")
    assert b.recovery.reclaim() == 1
    assert [d["job_id"] for d in b.waiting()] == [job_id] and b.result(job_id) is None
    b.run_next()
    assert b.result(job_id)["error"]["code"] == "INVALID_JOB" and b.status(job_id) == "rejected"


def test_reclaim_takes_at_most_its_limit_and_nothing_of_a_live_worker(tmp_path):
    a, b = _two_workers(tmp_path)
    for _ in range(3):
        a.submit(job())
    for _ in range(3):
        a.take()
    assert b.recovery.reclaim() == 0  # A lives and its leases run
    a.broker.declare_dead("unit-w1")
    assert b.recovery.reclaim(limit=2) == 2 and b.recovery.reclaim() == 1 and b.recovery.reclaim() == 0
    assert b.transport.depth() == 3
