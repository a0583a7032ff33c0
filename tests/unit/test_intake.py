"""The intake (runtime/intake.py): what a delivered job goes through before its handler runs.
Invalid documents are rejected with the code and field of their fault, a job routed elsewhere is
left for its worker, a job id runs once at a time and a result stored under it is never
overwritten by a reused id (the file transport, where a job id can arrive twice), idempotency
keys make a completed job's duplicates share its result and a running one's wait."""

import json
import os
import threading

import pytest
from conftest import wait_for, write_job
from runtimekit import BOUND, Rig, job


def _without(doc, key):
    return {k: v for k, v in doc.items() if k != key}


@pytest.mark.parametrize("doc, code, field, message", [
    (dict(job("bad-priority-01"), execution={"priority": 12}), "INVALID_JOB", "execution.priority",
     "execution.priority: must be 1-10, got 12"),
    (dict(job("extra-field-01"), colour="red"), "INVALID_JOB", "colour", "colour: unknown top-level field"),
    (_without(job("no-kind-0001"), "kind"), "INVALID_JOB", "kind", "kind: required field is missing"),
    (_without(job("no-version-01"), "version"), "INVALID_JOB", "version",
     "version: required field is missing"),
    (job("no-handler-01", operation="unit.missing"), "HANDLER_NOT_FOUND", "operation",
     "operation: no handler for operation 'unit.missing'; this worker serves "),
    (dict(job("bad-type-0001"), payload={"type": "system.echo.v2", "data": {}}), "PAYLOAD_TYPE_MISMATCH",
     "payload.type",
     "payload.type: 'system.echo.v2' is not accepted by system.echo (accepts system.echo.v1)"),
    (dict(job("capability-01"), constraints={"required_capabilities": ["unit.teleport"]}),
     "CAPABILITY_MISMATCH", "constraints.required_capabilities",
     "constraints.required_capabilities: this worker does not serve unit.teleport"),
    (job("too-late-0001", deadline="2020-01-01T00:00:00Z"), "DEADLINE_EXCEEDED", "execution.deadline",
     "execution.deadline: deadline 2020-01-01T00:00:00Z has passed; the job was not run"),
], ids=["priority", "unknown-field", "missing-kind", "missing-version", "no-handler", "payload-type",
        "capability", "deadline"])
def test_an_invalid_job_is_rejected_with_its_code_and_field(tmp_path, doc, code, field, message):
    rig = Rig(tmp_path)
    rig.submit(doc)
    rig.run_next()
    result = rig.result(doc["job_id"])
    assert result["status"] == "failed" and result["error"]["code"] == code
    assert result["error"]["message"].startswith(message) and result["error"]["phase"] == "validation"
    assert result["error"]["details"]["field"] == field
    assert rig.status(doc["job_id"]) == "rejected" and rig.transport.depth() == 0
    assert rig.table.outcomes() == {"rejected": 1} and rig.table.runs() == []


def test_bytes_that_are_no_job_are_rejected_without_a_result(tmp_path):
    rig = Rig(tmp_path)
    entry = rig.broker.add_raw(b'{"job_id": "not-json-001", ')
    rig.run_next()
    [dead] = rig.broker.dead_letters()
    assert dead["entry"] == entry and dead["reason"] == "not_json" and dead["worker"] == "unit-w1"
    assert dead["detail"].startswith("file: invalid JSON: Expecting property name")
    assert rig.result("not-json-001") is None and rig.table.outcomes() == {"rejected": 1}


def test_a_job_routed_to_another_worker_is_left_for_it(tmp_path):
    a = Rig(tmp_path, "unit-w1")
    b = Rig(tmp_path, "unit-w2", broker=a.broker)
    job_id = a.submit(dict(job(), routing={"worker_id": "unit-w2"}))
    a.run_next()
    assert a.status(job_id) == "pending" and a.transport.fetch(1, 0.0) == []  # not offered to A again
    b.run_next()
    assert b.result(job_id)["worker_id"] == "unit-w2" and a.table.outcomes() == {}


def test_a_second_entry_of_a_known_job_id_never_reaches_a_handler(tmp_path):
    rig = Rig(tmp_path)
    doc = job("once-only-01", data={"n": 1})
    rig.submit(doc)
    rig.run_next()
    rig.broker.add_raw(json.dumps(dict(doc, payload={"type": "system.echo.v1", "data": {"n": 2}})).encode())
    assert rig.transport.fetch(1, 0.0) == []
    assert rig.broker.dead_letters()[0]["reason"] == "duplicate_job_id"
    assert rig.result("once-only-01")["data"] == {"n": 1}


# -- a job id arriving twice (the file transport: two files may hold one job id) ------------

def _reason(base, name):
    with open(os.path.join(base, "jobs", "failed", name + ".reason.json")) as fh:
        return json.load(fh)


def test_a_job_id_running_here_is_rejected_as_a_duplicate_without_a_result(tmp_path):
    rig = Rig(tmp_path, files=str(tmp_path))
    jobs = os.path.join(str(tmp_path), "jobs")
    write_job(jobs, job("twice-here-01", operation="unit.wait"), name="a-first.json")
    write_job(jobs, job("twice-here-01"), name="b-second.json")
    rig.start_next("unit.wait")
    rig.run_next()
    reason = _reason(str(tmp_path), "b-second.json")
    assert reason["status"] == "rejected" and reason["error"]["code"] == "DUPLICATE_JOB_ID"
    assert reason["error"]["message"] == "job_id: a job with id twice-here-01 is already running"
    assert rig.result("twice-here-01") is None
    rig.handler("unit.wait").finish()
    rig.join()
    assert rig.result("twice-here-01")["status"] == "completed"
    assert rig.table.outcomes() == {"rejected": 1, "completed": 1}


def test_a_reused_job_id_never_overwrites_the_stored_result(tmp_path):
    a = Rig(tmp_path, "unit-w1", files=str(tmp_path))
    b = Rig(tmp_path, "unit-w2", files=str(tmp_path))
    jobs = os.path.join(str(tmp_path), "jobs")
    write_job(jobs, job("reused-id-01", data={"n": 1}), name="first.json")
    a.run_next()
    write_job(jobs, job("reused-id-01", data={"n": 2}), name="again.json")
    b.run_next()
    result = a.result("reused-id-01")
    assert result["worker_id"] == "unit-w1" and result["data"] == {"n": 1}
    error = _reason(str(tmp_path), "again.json")["error"]
    assert error["code"] == "DUPLICATE_JOB_ID"
    assert error["message"] == ("job_id: job id reused-id-01 already has a result (completed, attempt 1); "
                                "a job id is never reused, so this job was not run")
    assert b.table.outcomes() == {"rejected": 1}


def test_this_workers_own_stored_result_is_archived_without_running_again(tmp_path):
    rig = Rig(tmp_path, files=str(tmp_path))
    jobs = os.path.join(str(tmp_path), "jobs")
    write_job(jobs, job("own-result-01", operation="unit.fail", data={"until_attempt": 0}), name="first.json")
    rig.run_next()
    write_job(jobs, job("own-result-01", operation="unit.fail", data={"until_attempt": 0}), name="again.json")
    rig.run_next()  # as after a crash between its result and its archive: the stored outcome stands
    assert rig.handler("unit.fail").began == [("own-result-01", 1)]
    assert sorted(os.listdir(os.path.join(jobs, "done"))) == ["again.json", "first.json"]
    assert rig.table.outcomes() == {"completed": 2}


def test_a_result_of_an_earlier_attempt_is_replaced(tmp_path):
    rig = Rig(tmp_path, files=str(tmp_path))
    jobs = os.path.join(str(tmp_path), "jobs")
    write_job(jobs, job("next-attempt-1", operation="unit.fail", max_attempts=2), name="first.json")
    rig.run_next()
    assert rig.result("next-attempt-1")["status"] == "failed"
    write_job(jobs, job("next-attempt-1", operation="unit.fail", data={"until_attempt": 1}, max_attempts=2,
                        attempt=2), name="again.json")
    rig.run_next()
    result = rig.result("next-attempt-1")
    assert result["status"] == "completed" and result["execution_summary"]["attempt"] == 2


# -- idempotency keys -----------------------------------------------------------------------

def test_a_completed_key_makes_a_duplicate_that_shares_its_result(tmp_path):
    rig = Rig(tmp_path)
    first = rig.submit(job(data={"v": 1}, idempotency_key="key-1"))
    second = rig.submit(job(data={"v": 2}, idempotency_key="key-1"))
    rig.run_next()
    rig.run_next()
    dup = rig.result(second)
    assert dup["status"] == "completed" and dup["data"] == {"v": 1}
    assert dup["duplicate_of"]["job_id"] == first and rig.result(first)["data"] == {"v": 1}
    assert rig.status(second) == "completed" and rig.table.outcomes() == {"completed": 1, "duplicate": 1}


def test_the_key_of_a_failed_job_is_free_again(tmp_path):
    rig = Rig(tmp_path)
    rig.submit(job(operation="unit.fail", idempotency_key="key-2"))
    second = rig.submit(job(operation="unit.fail", data={"until_attempt": 0}, idempotency_key="key-2"))
    rig.run_next()
    rig.run_next()
    assert rig.result(second)["status"] == "completed" and len(rig.handler("unit.fail").began) == 2


def test_a_key_another_live_worker_runs_gives_the_job_back_when_stopping(tmp_path):
    a = Rig(tmp_path, "unit-w1")
    b = Rig(tmp_path, "unit-w2", broker=a.broker)
    a.submit(job(operation="unit.wait", idempotency_key="key-3"))
    second = a.submit(job(operation="unit.wait", idempotency_key="key-3"))
    a.start_next("unit.wait")
    b.stopping = True
    b.run_next()
    assert b.handler("unit.wait").began == [] and [d["job_id"] for d in b.waiting()] == [second]
    a.handler("unit.wait").finish()
    a.join()


def test_a_key_another_live_worker_runs_is_waited_for_then_shared(tmp_path):
    a = Rig(tmp_path, "unit-w1")
    b = Rig(tmp_path, "unit-w2", broker=a.broker)
    first = a.submit(job(operation="unit.wait", idempotency_key="key-4"))
    second = a.submit(job(operation="unit.wait", idempotency_key="key-4"))
    a.start_next("unit.wait")
    waiter = threading.Thread(target=b.run_next, daemon=True)
    waiter.start()
    wait_for(lambda: b.table.busy() == 1, timeout=BOUND, what="B holding the second job")
    assert b.result(second) is None
    a.handler("unit.wait").finish()
    a.join()
    waiter.join(BOUND)
    assert not waiter.is_alive() and b.handler("unit.wait").began == []
    assert b.result(second)["duplicate_of"]["job_id"] == first
    assert b.table.outcomes() == {"duplicate": 1}


def test_a_key_held_by_a_dead_worker_is_taken_over(tmp_path):
    a = Rig(tmp_path, "unit-w1")
    b = Rig(tmp_path, "unit-w2", broker=a.broker)
    a.submit(job(operation="unit.wait", idempotency_key="key-5"))
    second = a.submit(job(idempotency_key="key-5"))
    a.start_next("unit.wait")
    a.broker.declare_dead("unit-w1")
    b.run_next()
    assert b.result(second)["status"] == "completed" and "duplicate_of" not in b.result(second)
    a.handler("unit.wait").finish()
    a.join()
