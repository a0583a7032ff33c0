"""A fleet of real worker processes on the session's real Kafka broker (the README's "A fleet
on Kafka"): jobs submitted with ``guestkit-worker submit --transport kafka``, a poison record
sent with the broker's own console producer, a worker SIGKILLed mid-run.

Every job is a ``fault.journal`` job (tests/faultkit.py): each run appends ``JOB_ID ATTEMPT PID``
to a journal before anything else, so the tests count how often each job ran and where."""

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import fleetkit
import pytest
from conftest import wait_for
from faultkit import journal_job, read_runs
from fleetkit import long_job_taken, metric, stop_past_lease
from kafkafixture import read_topic, require_confluent_kafka

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _confluent_kafka():
    require_confluent_kafka()


def fleet_args(broker, pool, *, lease=3, threads=2):
    return ["--transport", "kafka", "--kafka-bootstrap-servers", broker.bootstrap, "--pool", pool,
            "--lease-seconds", str(lease), "--max-concurrent", str(threads)]


class Fleet(fleetkit.Fleet):
    """Worker processes of one Kafka pool, and the CLI's submit to it."""

    def __init__(self, tmp_path, broker, pool, **kw):
        super().__init__(tmp_path, fleet_args(broker, pool, **kw))
        self.broker, self.pool = broker, pool

    def submit(self, paths):
        """``guestkit-worker submit --transport kafka`` of job files; its CompletedProcess."""
        argv = [sys.executable, "-m", "guestkit_worker", "submit", "--transport", "kafka",
                "--kafka-bootstrap-servers", self.broker.bootstrap, "--pool", self.pool, *map(str, paths)]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)


def reader(broker, pool):
    """A transport of the pool for the test's look-ups (not a worker: never opened)."""
    from guestkit_worker.transports.kafka import KafkaSettings, KafkaTransport
    return KafkaTransport(KafkaSettings(broker.bootstrap), "test-reader", pool=pool)


def dead_letters(broker, pool, at_least, timeout=60):
    """The records of guestkit.POOL.dead: [(value, {header: value})]."""
    return read_topic(broker, f"guestkit.{pool}.dead", at_least, timeout, group=f"{pool}-test-dead")


def completed(t):
    """How many jobs of the pool have a completed result (one look at the pool's state)."""
    return len(t.list_jobs(status="completed", limit=1000).jobs)


@pytest.mark.timeout(900)
def test_three_workers_drain_300_submitted_jobs_with_a_poison_record_and_one_sigkilled(
        tmp_path, kafka_broker, pool):
    """The workers run while the jobs are submitted (ten files a submit, three submits at a
    time); the worker SIGKILLed is one seen running a job (its journal line without a result)."""
    journal = tmp_path / "journal"
    ids = [f"kfleet-{i:04d}" for i in range(300)]
    fleet = Fleet(tmp_path, kafka_broker, pool, lease=3, threads=2)
    files = tmp_path / "jobs-to-submit"
    files.mkdir()
    for job_id in ids:
        doc = journal_job(job_id, journal, seconds=1.5, execution={"max_attempts": 3})
        (files / f"{job_id}.json").write_text(json.dumps(doc))
    try:
        workers = [fleet.start(n) for n in ("kfleet-w1", "kfleet-w2", "kfleet-w3")]
        t = reader(kafka_broker, pool)
        paths = sorted(files.iterdir())
        with ThreadPoolExecutor(3) as submitters:
            submitted = submitters.map(fleet.submit, [paths[n:n + 10] for n in range(0, 300, 10)])
            kafka_broker.console_produce(f"guestkit.{pool}.jobs", ["this is no job {"])
            wait_for(lambda: completed(t) >= 60, timeout=600, interval=0.5, what="60 results")
            victim = wait_for(lambda: next((w for w in workers if running_on(t, journal, w.pid)), None),
                              timeout=120, interval=0.1, what="a job running")
            victim.proc.send_signal(signal.SIGKILL)  # mid-run: it holds a running job
            victim.proc.wait(10)
            survivors = [w for w in workers if w is not victim]
            assert [d.returncode for d in submitted] == [0] * 30
        wait_for(lambda: completed(t) == 300, timeout=300, interval=1, what="300 results")
        results = {j: t.get_result(j) for j in ids}
        by_job = {}
        for job_id, attempt, pid in read_runs(journal):
            by_job.setdefault(job_id, []).append((attempt, pid))
        assert sorted(by_job) == ids  # no job lost
        rerun = {j: rs for j, rs in by_job.items() if len(rs) > 1}
        for job_id, rs in rerun.items():  # the documented re-run of an attempt the killed worker had started
            assert [a for a, _ in rs] == [1, 2] and rs[0][1] == victim.pid, (job_id, rs)
        for job_id, rs in by_job.items():  # one stored result, of the last run
            assert results[job_id]["status"] == "completed", results[job_id]
            assert results[job_id]["execution_summary"]["attempt"] == rs[-1][0], (job_id, rs)
        # a job taken by the killed worker whose handler had not begun ran once, as attempt 2
        late = {j for j, rs in by_job.items() if len(rs) == 1 and rs[0][0] == 2}
        # its 2 job threads, and at most 4 outcomes each waiting to be stored
        assert len(rerun) + len(late) <= 2 * (1 + 4), (rerun, late)
        [(value, headers)] = dead_letters(kafka_broker, pool, 1)
        assert value == b"this is no job {" and headers["reason"] == "not_json", headers
        wait_for(lambda: kafka_broker.group_lag(f"guestkit.{pool}.workers", f"guestkit.{pool}.jobs") == 0,
                 timeout=30, what="the group's lag 0")
        for w in survivors:
            assert w.alive()
            wait_for(lambda w=w: metric(w, "guestkit_worker_queue_depth") == 0, timeout=30,
                     what="queue_depth 0")
        reclaimed = sum(metric(w, "guestkit_worker_jobs_reclaimed_total") for w in survivors)
        assert reclaimed >= len(rerun) + len(late)
        print(f"\nkafka fleet: 300 jobs, {len(rerun)} re-run after SIGKILL of {victim.name}, reclaimed "
              f"{reclaimed:.0f}, dead letter {headers}")
    finally:
        fleet.stop_all()


def running_on(t, journal, pid):
    """A job whose run in process pid is in the journal and that has no result yet."""
    mine = [j for j, _a, p in read_runs(journal) if p == pid]
    return any(t.get_result(j) is None for j in mine[-2:])


def test_a_job_longer_than_the_lease_runs_once_while_its_worker_lives(tmp_path, kafka_broker, pool):
    """An 8 s job, a 2 s lease, a second worker looking for work all along: one run, one result."""
    journal = tmp_path / "journal"
    fleet = Fleet(tmp_path, kafka_broker, pool, lease=2, threads=1)
    t = reader(kafka_broker, pool)
    try:
        a, b = long_job_taken(fleet, t, journal, "long-job-0001", ("long-a", "long-b"))
        result = t.wait_result("long-job-0001", 90)
        assert result["worker_id"] == "long-a" and result["execution_summary"]["attempt"] == 1
        assert [(j, att, pid) for j, att, pid in read_runs(journal)] == [("long-job-0001", 1, a.pid)]
        assert metric(b, "guestkit_worker_jobs_reclaimed_total") == 0
    finally:
        fleet.stop_all()


def test_a_worker_stopped_past_its_lease_loses_the_job_to_another(tmp_path, kafka_broker, pool):
    journal = tmp_path / "journal"
    fleet = Fleet(tmp_path, kafka_broker, pool, lease=2, threads=1)
    t = reader(kafka_broker, pool)
    try:
        a, b = long_job_taken(fleet, t, journal, "stopped-job-001", ("stop-a", "stop-b"))
        stop_past_lease(a, journal)
        result = t.wait_result("stopped-job-001", 60)
        assert result["worker_id"] == "stop-b" and result["execution_summary"]["attempt"] == 2
        assert read_runs(journal) == [("stopped-job-001", 1, a.pid), ("stopped-job-001", 2, b.pid)]
        wait_for(lambda: metric(a, "guestkit_worker_leases_lost_total") >= 1, timeout=30,
                 what="a's lost lease")
        assert t.get_result("stopped-job-001")["worker_id"] == "stop-b"
        assert metric(b, "guestkit_worker_jobs_reclaimed_total") == 1
        assert a.alive()  # the worker that lost its lease lives on
    finally:
        fleet.stop_all()
