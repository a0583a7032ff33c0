"""The pool's topics (made when missing, checked when present) and the consumer group's lag
on the jobs topic, through the Kafka admin API."""

from __future__ import annotations

import contextlib
import threading
import time

from ...job.errors import ConfigError
from .settings import KafkaSettings, Topics
from .statelog import MAX_RECORD_BYTES, STATE_TOPIC_CONFIG, KafkaUnavailable

#: partitions of a jobs topic this transport makes (the intake is spread over the group)
JOBS_PARTITIONS = 3


class PoolAdmin:
    """Admin calls of one transport (made lazily, closed with it)."""

    def __init__(self, settings: KafkaSettings, topics: Topics, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient
        self.settings, self.topics, self.timeout = settings, topics, timeout
        self.client = AdminClient(settings.client_config())
        self._consumer = None
        self._lag_lock = threading.Lock()

    def ensure_topics(self) -> None:
        """Make the pool's topics that are missing; ConfigError for a state topic with more than
        one partition (its one order is what every worker agrees on)."""
        meta = self._metadata()
        wanted = {self.topics.state: (1, STATE_TOPIC_CONFIG),
                  self.topics.jobs: (JOBS_PARTITIONS, {"max.message.bytes": str(MAX_RECORD_BYTES)}),
                  self.topics.dead: (1, {"max.message.bytes": str(MAX_RECORD_BYTES)})}
        missing = [name for name in wanted if name not in meta.topics or meta.topics[name].error is not None]
        if missing:
            self._create(missing, wanted, replicas=min(3, max(1, len(meta.brokers))))
            meta = self._metadata()
        state = meta.topics.get(self.topics.state)
        if state is not None and state.error is None and len(state.partitions) != 1:
            raise ConfigError(f"topic {self.topics.state} has {len(state.partitions)} partitions; the Kafka "
                              "transport needs exactly one: delete it or choose another --pool")

    def _metadata(self):
        try:
            return self.client.list_topics(timeout=self.timeout)
        except Exception as exc:
            raise KafkaUnavailable(f"kafka: cannot list topics ({exc})") from None

    def _create(self, names: list, wanted: dict, replicas: int) -> None:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewTopic
        new = [NewTopic(n, num_partitions=wanted[n][0], replication_factor=replicas, config=wanted[n][1])
               for n in names]
        for name, future in self.client.create_topics(new, operation_timeout=self.timeout).items():
            try:
                future.result(self.timeout + 5)
            except Exception as exc:
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise KafkaUnavailable(f"kafka: cannot create topic {name} ({exc}); create it as the "
                                       "README's Kafka section says") from None

    def lag(self) -> int:
        """Records of the jobs topic the group has not taken in yet (end minus committed offset,
        or minus the start where nothing is committed).  Read with a consumer of the group that
        never joins it (``committed``): librdkafka 2.16's admin call for group offsets crashed
        the process against a broker that had just started (bench/RESULTS.md)."""
        end = time.monotonic() + 2 * self.timeout
        while True:
            try:
                return self._lag_once()
            except KafkaUnavailable as exc:
                if not _coordinator_busy(exc) or time.monotonic() > end:
                    raise
                time.sleep(0.2)  # a broker that just started loads its groups: ask again

    def _lag_once(self) -> int:
        from confluent_kafka import TopicPartition
        try:
            with self._lag_lock:
                consumer = self._lag_consumer()
                meta = consumer.list_topics(self.topics.jobs, timeout=self.timeout).topics[self.topics.jobs]
                parts = [TopicPartition(self.topics.jobs, p) for p in sorted(meta.partitions)]
                committed = consumer.committed(parts, timeout=self.timeout)
                lag = 0
                for tp in committed:
                    low, high = consumer.get_watermark_offsets(tp, timeout=self.timeout, cached=False)
                    lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
                return lag
        except Exception as exc:
            raise KafkaUnavailable(f"{self.topics.jobs}: cannot read the group's lag ({exc})") from None

    def _lag_consumer(self):
        if self._consumer is None:
            from confluent_kafka import Consumer
            self._consumer = Consumer(dict(self.settings.client_config(), **{
                "group.id": self.topics.group, "enable.auto.commit": False}))
        return self._consumer

    def close(self) -> None:
        with self._lag_lock:
            if self._consumer is not None:
                with contextlib.suppress(Exception):
                    self._consumer.close()
                self._consumer = None


#: group coordinator errors of a broker that has just started or moved a group: asked again
_COORDINATOR_BUSY = ("NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE")


def _coordinator_busy(exc: BaseException) -> bool:
    return any(code in str(exc) for code in _COORDINATOR_BUSY)
