"""The Kafka fleet benchmark's harness still works (not a benchmark: 40 jobs, one round).

bench/kafka_fleet.py starts its own Kafka node (tests/kafkafixture.py) and, per side, consumer
processes that must complete every job exactly once (the harness reports a side that did not
as failed); here the floor runs at 1 process x 2 threads, and the worker side too once the CLI
has --transport kafka."""


import pytest
from conftest import run_bench
from kafkafixture import kafka_lib, require_confluent_kafka

pytestmark = pytest.mark.integration


def test_kafka_fleet_harness_runs_the_floor(tmp_path):
    require_confluent_kafka()
    kafka_lib()  # java and the broker's jars (fails in CI when missing)
    doc = run_bench(tmp_path, "kafka_fleet.py", "--rounds", "1", "--jobs", "40", "--shapes", "1x2",
                    timeout=280)
    rows = [line for line in doc["table"].splitlines() if line.startswith("1x2 ")]
    assert rows and rows[0].split()[1] == "floor" and "failed" not in rows[0], doc["table"]
    assert "failed sides" not in doc["table"], doc["table"]
    assert doc["goals"] and doc["goals"][0]["goal"] == "kafka fleet 1x2", doc
