"""A throw-away one-node Apache Kafka broker for a benchmark: the test suite's broker
(tests/kafkafixture.py: the jars tests/kafka/fetch caches, KRaft, free 127.0.0.1 ports) in a
directory under the scratch root, stopped when the benchmark ends.

``with KafkaServer(properties) as srv: srv.bootstrap``; ``srv.broker`` has the fixture's helpers
(create_topic, set_group_config, group_lag, ...).  Raises SystemExit when java or the jars are
missing.
"""

from __future__ import annotations

import os
import sys

import common

sys.path.insert(0, os.path.join(common.ROOT, "tests"))


class KafkaServer:
    def __init__(self, properties: dict | None = None) -> None:
        self.properties = properties or {}
        self.broker = None

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def __enter__(self) -> KafkaServer:
        import kafkafixture
        try:
            self.broker = kafkafixture.start_kafka(common.fresh_dir("kafka"), self.properties)
        except BaseException as e:  # pytest's skip outside CI is a BaseException
            raise SystemExit(f"no Kafka broker: {e}") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.broker is not None:
            self.broker.stop()
