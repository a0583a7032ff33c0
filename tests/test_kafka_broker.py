"""The Kafka broker fixture itself: a real one-node Apache Kafka that confluent-kafka, the
broker's console producer, a classic consumer group and a share group all work against."""

import pytest
from conftest import wait_for
from kafkafixture import KafkaBroker

pytestmark = pytest.mark.integration


def consume(bootstrap: str, group: str, topic: str, count: int, timeout: float = 60) -> list:
    """count records of topic read by a classic consumer of group, committed; the Messages."""
    from confluent_kafka import Consumer
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = []
    try:
        def read():
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append(msg)
            return len(got) >= count
        wait_for(read, timeout=timeout, interval=0, what=f"{count} records of {topic}")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


def test_records_round_trip_and_lag_reads_the_committed_offsets(kafka_broker: KafkaBroker, pool):
    topic = kafka_broker.create_topic(f"guestkit.{pool}.jobs", partitions=3)
    kafka_broker.produce(topic, b'{"job_id": "a"}', key=b"a")
    kafka_broker.produce(topic, b'{"job_id": "b"}', key=b"b")
    group = f"{pool}-workers"
    assert kafka_broker.group_lag(group, topic) == 2  # nothing committed yet
    got = consume(kafka_broker.bootstrap, group, topic, 2)
    assert sorted(m.value() for m in got) == [b'{"job_id": "a"}', b'{"job_id": "b"}']
    assert kafka_broker.group_lag(group, topic) == 0


def test_console_producer_sends_a_raw_record(kafka_broker: KafkaBroker, pool):
    topic = kafka_broker.create_topic(f"guestkit.{pool}.jobs")
    kafka_broker.console_produce(topic, ["poison\tnot json {"], key_separator="\t")
    kafka_broker.console_produce(topic, ["no key here"])
    got = consume(kafka_broker.bootstrap, f"{pool}-g", topic, 2)
    assert [(m.key(), m.value()) for m in got] == [(b"poison", b"not json {"), (None, b"no key here")]


def test_share_group_takes_acknowledged_records_once(kafka_broker: KafkaBroker, pool):
    from confluent_kafka import AcknowledgeType, ShareConsumer
    topic = kafka_broker.create_topic(f"guestkit.{pool}.jobs", partitions=2)
    group = f"{pool}-share"
    kafka_broker.set_group_config(group, {"share.auto.offset.reset": "earliest",
                                          "share.record.lock.duration.ms": "15000"})
    for i in range(4):
        kafka_broker.produce(topic, f"job-{i}".encode(), partition=i % 2)
    consumer = ShareConsumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": group,
                              "share.acknowledgement.mode": "explicit"})
    consumer.subscribe([topic])
    seen = []
    try:
        def take():
            for msg in consumer.poll(0.5):
                assert msg.error() is None, msg.error()
                seen.append((msg.value(), msg.delivery_count()))
                consumer.acknowledge(msg, AcknowledgeType.ACCEPT)
            consumer.commit_sync(30)
            return len(seen) >= 4
        wait_for(take, timeout=60, interval=0, what="4 records through the share group")
    finally:
        consumer.close()
    assert sorted(seen) == [(f"job-{i}".encode(), 1) for i in range(4)]
    assert kafka_broker.share_group_lag(group) == 0
