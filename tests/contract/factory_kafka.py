"""The Kafka transport in the contract suite: a pool of its own (its own topics and group) on
the session's Kafka broker (tests/kafkafixture.py), with a two-second lease so that reclaim
comes quickly, and calls that give up on the broker after three seconds."""

import json
import uuid

from kafkafixture import require_confluent_kafka

NAME = "kafka"
#: its tests carry the integration marker (the session's broker is a process)
INTEGRATION = True
LEASE_SECONDS = 2
TIMEOUT = 3


class KafkaFactory:
    def __init__(self, broker):
        self.broker = broker
        self.pool = f"contract{uuid.uuid4().hex[:10]}"

    def make(self, worker_id, *, max_job_bytes=1 << 20, observer=None):
        from guestkit_worker.transports.kafka import KafkaSettings, KafkaTransport
        return KafkaTransport(KafkaSettings(self.broker.bootstrap), worker_id, pool=self.pool,
                              lease_seconds=LEASE_SECONDS, max_job_bytes=max_job_bytes, timeout=TIMEOUT,
                              observer=observer)

    def kill(self, transport):
        # a crash: nothing acknowledged; its claims lapse a lease later.  Its life would lapse a
        # lease later too: ended here by the pool's own goodbye command, written from outside,
        # so the test need not wait for that lease.
        from guestkit_worker.transports.kafka import Topics
        cmd = {"op": "bye", "w": transport.worker_id, "rid": uuid.uuid4().hex}
        self.broker.produce(Topics(self.pool).state, json.dumps(cmd).encode(), partition=0)

    def advance(self, seconds):
        import time
        time.sleep(seconds)  # leases run on the broker's clock

    def lapse(self, transport):
        pass  # a two-second lease runs out by itself

    def break_store(self):
        self.broker.kill()  # SIGKILL: connections refused until it is back

    def mend_store(self):
        self.broker.restart()  # same ports and data directory: every acknowledged record kept

    def inject_raw(self, data, name):
        from guestkit_worker.transports.kafka import Topics
        self.broker.produce(Topics(self.pool).jobs, data)

    def close(self):
        pass


def make_factory(request, tmp_path):
    require_confluent_kafka()
    return KafkaFactory(request.getfixturevalue("kafka_broker"))
