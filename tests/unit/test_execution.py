"""The executor (runtime/execution.py): one delivery of the in-memory transport from its fetch to
its stored outcome, on an injected clock: completed, failed, retried as attempt + 1, a handler
raising, timed out, cancelled on request or by a shutdown, a handler that ignores cancellation
(the watchdog writes its outcome), a result JSON cannot hold, and a store that is down at start."""

from runtimekit import GRACE, Rig, job

from guestkit_worker.job import outcomes


def test_a_job_runs_to_its_stored_completed_result(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(data={"greeting": "hello"}))
    rig.run_next()
    result = rig.result(job_id)
    assert result["status"] == "completed" and result["data"] == {"greeting": "hello"}
    assert result["worker_id"] == "unit-w1" and result["error"] is None
    assert result["execution_summary"]["attempt"] == 1
    assert rig.status(job_id) == "completed" and rig.transport.depth() == 0
    assert rig.table.outcomes() == {"completed": 1} and rig.jobs_total("system.echo", "completed") == 1
    assert rig.table.busy() == 0 and rig.table.free_slots() == 1 and rig.table.runs() == []


def test_a_handler_error_fails_the_job_with_its_code(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.fail", data={"code": "IMAGE_BROKEN"}, max_attempts=3))
    rig.run_next()
    result = rig.result(job_id)
    assert result["status"] == "failed" and result["error"]["code"] == "IMAGE_BROKEN"
    assert result["error"]["message"] == "attempt 1 fails on purpose" and not result["error"]["recoverable"]
    assert rig.status(job_id) == "failed" and rig.transport.depth() == 0  # not recoverable: no retry
    assert rig.table.outcomes() == {"failed": 1}


def test_a_recoverable_failure_is_queued_again_as_attempt_plus_one(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.fail", data={"recoverable": True, "until_attempt": 1},
                            max_attempts=3))
    rig.run_next()
    assert rig.result(job_id) is None  # no result for an attempt that is retried
    [waiting] = rig.waiting()
    assert waiting["job_id"] == job_id and waiting["execution"] == {"max_attempts": 3, "attempt": 2}
    assert rig.transport.job_status(job_id).attempt == 2 and rig.status(job_id) == "pending"
    rig.run_next()
    result = rig.result(job_id)
    assert result["status"] == "completed" and result["data"] == {"attempt": 2}
    assert result["execution_summary"]["attempt"] == 2
    assert rig.handler("unit.fail").began == [(job_id, 1), (job_id, 2)]


def test_a_recoverable_failure_of_the_last_attempt_is_final(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.fail", data={"recoverable": True}, max_attempts=2))
    rig.run_next()
    rig.run_next()
    result = rig.result(job_id)
    assert result["status"] == "failed" and result["execution_summary"]["attempt"] == 2
    assert result["error"]["code"] == "UNIT_FAILED" and result["error"]["retry_recommended"] is True
    assert rig.transport.depth() == 0 and rig.handler("unit.fail").began == [(job_id, 1), (job_id, 2)]


def test_a_handler_raising_fails_its_job_and_the_next_job_runs(tmp_path):
    rig = Rig(tmp_path)
    bad = rig.submit(job(operation="unit.raise", data={"message": "kaput"}))
    good = rig.submit(job())
    rig.run_next()
    rig.run_next()
    error = rig.result(bad)["error"]
    assert error["code"] == "HANDLER_ERROR" and error["message"] == "RuntimeError: kaput"
    assert error["phase"] == "execution"
    assert rig.result(good)["status"] == "completed"
    assert rig.table.outcomes() == {"failed": 1, "completed": 1}


def test_a_result_json_cannot_hold_fails_the_job(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.badresult"))
    rig.run_next()
    result = rig.result(job_id)
    assert result["status"] == "failed" and result["error"]["code"] == "INVALID_RESULT"
    assert result["error"]["phase"] == "export" and "cannot be stored as JSON" in result["error"]["message"]


def test_the_deadline_is_the_jobs_timeout_on_the_injected_clock_and_a_timeout_is_stored(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.wait", timeout_seconds=30))
    start = rig.clock()
    rig.start_next("unit.wait")
    assert rig.handler("unit.wait").remaining == [30.0]
    assert rig.run_of(job_id).ctx.deadline == start + 30
    rig.clock.advance(29.5)
    assert rig.watchdog.tick() == start + 30  # the next look is at the deadline, not later
    assert rig.run_of(job_id).stop_at is None
    rig.clock.advance(0.5)
    rig.watchdog.tick()
    rig.join()
    result = rig.result(job_id)
    assert result["status"] == "timeout" and result["error"]["code"] == "TIMEOUT"
    assert result["error"]["message"] == "job exceeded its timeout of 30s; its processes were killed"
    assert rig.status(job_id) == "timeout" and rig.transport.depth() == 0
    assert rig.jobs_total("unit.wait", "timeout") == 1


def test_a_cancel_request_cancels_the_running_job_for_good(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.wait"))
    rig.start_next("unit.wait")
    assert rig.transport.cancel(job_id, outcomes.cancelled_before_start) == "cancelling"
    # what the worker's main loop does with the transport's cancel requests
    for run in rig.table.runs():
        if run.job_id in rig.transport.cancel_requests([run.job_id]):
            rig.executor.stop(run, "requested")
    rig.join()
    result = rig.result(job_id)
    assert result["status"] == "cancelled" and result["error"]["code"] == "CANCELLED"
    assert result["error"]["message"] == "job was cancelled on request while it ran; it will not be run again"
    assert rig.status(job_id) == "cancelled" and rig.transport.depth() == 0


def test_a_job_stopped_by_shutdown_is_given_back_and_its_next_run_replaces_the_result(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.wait"))
    rig.start_next("unit.wait")
    rig.executor.stop(rig.run_of(job_id), "shutdown")
    rig.join()
    result = rig.result(job_id)
    assert result["status"] == "cancelled" and result["error"]["retry_recommended"] is True
    assert [d["job_id"] for d in rig.waiting()] == [job_id]  # back in the queue, unchanged
    assert rig.waiting()[0].get("execution") is None
    rig.handler("unit.wait").finish()
    rig.run_next()
    assert rig.result(job_id)["status"] == "completed" and rig.status(job_id) == "completed"
    assert rig.handler("unit.wait").began == [(job_id, 1), (job_id, 1)]


def test_a_handler_ignoring_cancellation_gets_its_outcome_from_the_watchdog(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.stubborn", timeout_seconds=10))
    rig.start_next("unit.stubborn")
    rig.clock.advance(10)
    rig.watchdog.tick()  # the deadline: stopped, and the handler goes on
    run = rig.run_of(job_id)
    assert run.stop_reason == "timeout" and run.ctx.cancelled and rig.result(job_id) is None
    rig.clock.advance(GRACE - 0.1)
    rig.watchdog.tick()
    assert rig.result(job_id) is None
    rig.clock.advance(0.1)
    rig.watchdog.tick()  # the grace is over: the outcome is written without the handler
    assert rig.result(job_id)["status"] == "timeout" and rig.status(job_id) == "timeout"
    assert run.detached and rig.table.busy() == 0 and rig.table.in_hand == 1  # its thread stays counted
    rig.handler("unit.stubborn").finish()
    rig.join()
    assert rig.result(job_id)["status"] == "timeout"  # the late "completed" is discarded
    assert rig.table.in_hand == 0 and rig.table.detached == 0 and rig.table.outcomes() == {"timeout": 1}


def test_a_store_down_at_start_runs_nothing_and_backs_off(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.wait"))
    d = rig.take()
    rig.broker.set_unavailable("unit test")
    rig.executor.process(d)
    assert rig.handler("unit.wait").began == [] and rig.backoffs == 1
    assert rig.table.in_hand == 0 and rig.table.runs() == [] and rig.table.outcomes() == {}
    rig.broker.set_unavailable(None)
    assert rig.status(job_id) == "pending" and rig.result(job_id) is None
