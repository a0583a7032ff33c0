"""The pool's topics (made when missing, checked when present) and the consumer group's lag
on the jobs topic, through the Kafka admin API."""

from __future__ import annotations

from ...job.errors import ConfigError
from .settings import KafkaSettings, Topics
from .statelog import MAX_RECORD_BYTES, STATE_TOPIC_CONFIG, KafkaUnavailable

#: partitions of a jobs topic this transport makes (the intake is spread over the group)
JOBS_PARTITIONS = 3


class PoolAdmin:
    """Admin calls of one transport (made lazily, closed with it)."""

    def __init__(self, settings: KafkaSettings, topics: Topics, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient
        self.topics, self.timeout = topics, timeout
        self.client = AdminClient(settings.client_config())

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
        """Records of the jobs topic the group has not taken in yet (end minus committed offset)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec
        try:
            meta = self.client.list_topics(self.topics.jobs, timeout=self.timeout).topics[self.topics.jobs]
            parts = [TopicPartition(self.topics.jobs, p) for p in sorted(meta.partitions)]
            request = [ConsumerGroupTopicPartitions(self.topics.group, parts)]
            futures = self.client.list_consumer_group_offsets(request, request_timeout=self.timeout)
            committed = futures[self.topics.group].result(self.timeout + 5).topic_partitions
            ends = self._offsets(parts, OffsetSpec.latest())
            starts = self._offsets(parts, OffsetSpec.earliest())
        except Exception as exc:
            raise KafkaUnavailable(f"{self.topics.jobs}: cannot read the group's lag ({exc})") from None
        return sum(max(0, ends[tp.partition] - (tp.offset if tp.offset >= 0 else starts[tp.partition]))
                   for tp in committed)

    def _offsets(self, parts: list, spec) -> dict:
        from confluent_kafka import TopicPartition
        futures = self.client.list_offsets({TopicPartition(tp.topic, tp.partition): spec for tp in parts},
                                           request_timeout=self.timeout)
        return {tp.partition: f.result(self.timeout + 5).offset for tp, f in futures.items()}
