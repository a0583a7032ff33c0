"""The watchdog (runtime/watchdog.py) over real runs of the executor, on the injected clock: each
run is stopped exactly at its own deadline, the next look is due at the nearest deadline or
grace, and a run whose outcome is already decided is left alone; the test moves the clock and
makes each pass (Watchdog.tick), never sleeping."""

from conftest import wait_for
from runtimekit import BOUND, GRACE, Rig, job

from guestkit_worker.runtime.watchdog import Watchdog


def test_each_run_is_stopped_at_its_own_deadline_and_the_next_look_is_the_nearest(tmp_path):
    rig = Rig(tmp_path, max_concurrent=2)
    start = rig.clock()
    assert rig.watchdog.tick() == start + 1.0  # nothing runs: it looks again within a second
    short = rig.submit(job(operation="unit.wait", timeout_seconds=5))
    long = rig.submit(job(operation="unit.wait", timeout_seconds=20))
    rig.start_next("unit.wait")
    rig.start_next("unit.wait")
    rig.clock.advance(4.5)
    assert rig.watchdog.tick() == start + 5  # the short job's deadline
    rig.clock.advance(0.5)
    assert rig.watchdog.tick() == start + 6  # stopped; the next look within a second
    assert rig.run_of(long).stop_at is None
    wait_for(lambda: rig.result(short), timeout=BOUND, what="the short job's outcome")
    assert rig.result(short)["status"] == "timeout"
    rig.clock.advance(15)
    rig.watchdog.tick()
    rig.join()
    assert rig.result(long)["status"] == "timeout" and rig.table.outcomes() == {"timeout": 2}


def test_a_run_stopped_for_another_reason_is_abandoned_after_the_grace(tmp_path):
    rig = Rig(tmp_path)
    job_id = rig.submit(job(operation="unit.stubborn", timeout_seconds=600))
    rig.start_next("unit.stubborn")
    rig.executor.stop(rig.run_of(job_id), "shutdown")
    rig.clock.advance(GRACE - 0.5)
    assert rig.watchdog.tick() == rig.clock() + 0.5  # the end of the grace is the next look
    assert rig.result(job_id) is None
    rig.clock.advance(0.5)
    rig.watchdog.tick()
    result = rig.result(job_id)
    assert result["status"] == "cancelled" and result["error"]["code"] == "CANCELLED"
    assert [d["job_id"] for d in rig.waiting()] == [job_id]  # a shutdown gives the job back
    rig.handler("unit.stubborn").finish()
    rig.join()
    assert rig.result(job_id) == result


def test_a_run_already_decided_is_left_alone(tmp_path):
    rig = Rig(tmp_path)
    stopped, abandoned = [], []
    watchdog = Watchdog(rig.table.runs, lambda run, why: stopped.append(run), abandoned.append,
                        clock=rig.clock)
    job_id = rig.submit(job(operation="unit.wait", timeout_seconds=1))
    rig.start_next("unit.wait")
    rig.run_of(job_id).finalize()  # its outcome decided elsewhere (a second signal's cancel_now)
    rig.clock.advance(100)
    watchdog.tick()
    assert stopped == [] and abandoned == []
    rig.handler("unit.wait").finish()
    rig.join()
    assert rig.result(job_id) is None  # the run's own outcome is not stored either: it was decided
