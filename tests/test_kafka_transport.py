"""The Kafka transport beyond the contract suite: its settings and their one-line errors, the
password never shown, the CLI's job commands over it, a new worker's replica rebuilt from the
state topic, and dead letters for entries delivered too often (on the session's real broker,
tests/kafkafixture.py)."""

import json
import subprocess
import sys

import pytest
from conftest import make_job, wait_for, worker_env
from kafkafixture import read_topic, require_confluent_kafka

pytestmark = pytest.mark.integration


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "guestkit_worker", *args], env=env or worker_env(),
                          capture_output=True, text=True, timeout=timeout)


def transport(broker, pool, worker_id, **kw):
    from guestkit_worker.transports.kafka import KafkaSettings, KafkaTransport
    return KafkaTransport(KafkaSettings(broker.bootstrap), worker_id, pool=pool, timeout=5, **kw)


def test_without_confluent_kafka_a_clear_error_names_the_extra(tmp_path):
    """The package is imported only for --transport kafka; when it cannot be, submit and run
    end with exit 2 and one line naming the extra."""
    blocked = tmp_path / "blocked" / "confluent_kafka"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no confluent_kafka here')\n")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("no-kafka-0001")))
    env = worker_env()
    env["PYTHONPATH"] = f"{tmp_path / 'blocked'}:{env['PYTHONPATH']}"
    for args in (["submit", "--transport", "kafka", str(job)],
                 ["run", "--once", "--transport", "kafka", "--metrics-enabled", "false",
                  "--work-dir", str(tmp_path / "work")]):
        done = cli(*args, env=env)
        errors = [ln for ln in done.stderr.strip().splitlines() if " INFO " not in ln]
        assert done.returncode == 2 and len(errors) == 1, (args, done.stderr)  # run logs its start
        wanted = "--transport kafka needs the Python package confluent-kafka: pip install '.[kafka]'"
        assert wanted in errors[0], errors
    assert cli("submit", str(job), "--jobs-dir", str(tmp_path), env=env).returncode == 0  # files: no import


@pytest.mark.parametrize("flags, named", [
    (["--kafka-bootstrap-servers", "kafka-01"], "--kafka-bootstrap-servers"),
    (["--kafka-sasl-mechanism", "PLAIN"], "--kafka-sasl-username and --kafka-sasl-password-file"),
    (["--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "u", "--kafka-sasl-password-file",
      "/nonexistent/kafka-password"], "--kafka-sasl-password-file /nonexistent/kafka-password"),
    (["--kafka-sasl-mechanism", "GSSAPI"], "--kafka-sasl-mechanism"),
])
def test_bad_kafka_settings_are_one_line_errors(tmp_path, flags, named):
    require_confluent_kafka()
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("bad-settings-0001")))
    done = cli("submit", "--transport", "kafka", *flags, str(job))
    lines = done.stderr.strip().splitlines()  # an argparse choice error: its usage, then one line
    assert done.returncode == 2 and named in lines[-1] and "Traceback" not in done.stderr, done.stderr


def test_the_sasl_password_is_never_shown(tmp_path):
    require_confluent_kafka()
    from guestkit_worker.transports.kafka import KafkaSettings, KafkaTransport
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cret-Kafka-pw\n")
    settings = KafkaSettings("127.0.0.1:1", sasl_mechanism="SCRAM-SHA-512", sasl_username="guestkit",
                             sasl_password_file=str(secret))
    assert settings.client_config()["sasl.password"] == "s3cret-Kafka-pw"
    assert settings.protocol() == "SASL_PLAINTEXT"
    t = KafkaTransport(settings, "w", timeout=1)
    shown = [settings.describe(), t.describe(), json.dumps(t.health())]
    assert all("s3cret" not in text for text in shown), shown
    assert "SASL SCRAM-SHA-512 as guestkit" in t.describe()


def test_cli_submit_status_cancel_result_list_over_kafka(kafka_broker, pool, tmp_path):
    require_confluent_kafka()
    where = ["--transport", "kafka", "--kafka-bootstrap-servers", kafka_broker.bootstrap, "--pool", pool]
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("kcli-0001")))
    done = cli("submit", *where, str(job))
    assert done.returncode == 0 and done.stdout == "kcli-0001 pending\n", done.stderr
    again = cli("submit", *where, str(job))
    assert again.returncode == 0 and again.stdout == "kcli-0001 pending (already submitted)\n", again
    status = cli("status", *where, "kcli-0001")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "pending", status.stderr
    cancelled = cli("cancel", *where, "kcli-0001")
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    result = cli("result", *where, "kcli-0001")
    assert json.loads(result.stdout)["status"] == "cancelled", result.stdout
    listed = cli("list", *where)
    assert "kcli-0001" in listed.stdout and "cancelled" in listed.stdout, listed.stdout


def test_a_worker_started_later_rebuilds_the_state_from_the_topic(kafka_broker, pool):
    """Every change is in the state topic: a transport opened after jobs were submitted, run
    and cancelled by others knows each of them as they do."""
    require_confluent_kafka()
    from guestkit_worker.job import outcomes
    from guestkit_worker.transports.base import Outcome
    first = transport(kafka_broker, pool, "rebuild-a")
    first.open()
    try:
        for n in range(3):
            first.submit(make_job(f"rebuild-{n}"))
        [d] = first.fetch(1, 5)
        d.job_id = "rebuild-0"
        o = Outcome(d, "completed", result={"job_id": "rebuild-0", "status": "completed", "data": {"n": 7}})
        first.commit([o])
        assert o.error is None
        assert first.cancel("rebuild-1", outcomes.cancelled_before_start) == "cancelled"
        late = transport(kafka_broker, pool, "rebuild-b")
        late.open()
        try:
            assert [late.job_status(f"rebuild-{n}").status for n in range(3)] == ["completed", "cancelled",
                                                                                  "pending"]
            assert late.get_result("rebuild-0")["data"] == {"n": 7} and late.depth() == 1
            [d2] = late.fetch(4, 5)
            assert d2.job_id == "rebuild-2"
        finally:
            late.close()
    finally:
        first.close()


def test_entries_delivered_too_often_go_to_the_dead_letter_topic(kafka_broker, pool):
    """A job whose every taker lets it go (a decision that cannot store) is taken over again and
    again; past --max-deliveries it is a dead letter: in guestkit.POOL.dead with its reason,
    its job failed DEAD_LETTERED, counted by the observer."""
    require_confluent_kafka()
    from guestkit_worker.transports.base import TransportObserver

    class Seen(TransportObserver):
        def __init__(self):
            self.dead = []

        def dead_lettered(self, reason):
            self.dead.append(reason)
    seen = Seen()
    a = transport(kafka_broker, pool, "often-a", lease_seconds=1)
    b = transport(kafka_broker, pool, "often-b", lease_seconds=1, max_deliveries=2, observer=seen)
    a.open()
    b.open()
    try:
        a.submit(make_job("often-0001"))
        [d] = a.fetch(1, 5)
        a.close()  # gone: b takes it over at once

        def cannot_store(delivery, previous):
            raise OSError("the store refuses")  # the transport lets it go, to be taken over again
        wait_for(lambda: (b.reclaim(cannot_store, 10), seen.dead)[1], timeout=60, interval=0.3,
                 what="the dead letter")
        assert seen.dead == ["max_deliveries"]
        status = b.job_status("often-0001")
        assert status.status == "failed" and status.error["code"] == "DEAD_LETTERED", status
        letters = read_topic(kafka_broker, f"guestkit.{pool}.dead", 1)
        [(value, headers)] = letters
        assert json.loads(value)["job_id"] == "often-0001"
        assert headers["reason"] == "max_deliveries" and headers["job_id"] == "often-0001", headers
        assert b.depth() == 0 and b.fetch(4, 0.3) == []
    finally:
        b.close()


def test_workers_lists_live_and_gone_workers_with_their_jobs(kafka_broker, pool):
    require_confluent_kafka()
    where = ["--transport", "kafka", "--kafka-bootstrap-servers", kafka_broker.bootstrap, "--pool", pool]
    a = transport(kafka_broker, pool, "kworkers-a")
    a.open()
    a.submit(make_job("kworkers-0001"))
    [d] = a.fetch(1, 5)

    def listed():
        done = cli("workers", *where, "--json")
        assert done.returncode == 0, done.stderr
        return {w["worker_id"]: w for w in json.loads(done.stdout)}
    w = listed()["kworkers-a"]
    assert (w["alive"], w["running"], w["held"], w["pool"]) == (True, ["kworkers-0001"], 1, pool), w
    a.close()  # its goodbye: gone at once, its job still held until another takes it over
    w = listed()["kworkers-a"]
    assert (w["alive"], w["running"]) == (False, ["kworkers-0001"]), w
