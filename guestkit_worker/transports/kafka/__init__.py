"""The Kafka transport (``--transport kafka``, the ``kafka`` extra: confluent-kafka).

A pool lives in three topics: ``guestkit.POOL.jobs`` (job documents from any producer, taken
in by the workers' consumer group), ``guestkit.POOL.state`` (one partition: every change to
the queue and the store as a command, applied in the topic's order by every worker's replica)
and ``guestkit.POOL.dead`` (dead letters).  Modules: :mod:`.settings` (topics, client
settings), :mod:`.state` (the replicated state, no Kafka), :mod:`.statelog` (the command log
and replica), :mod:`.intake` (the jobs topic's group), :mod:`.admin` (topics, lag),
:mod:`.transport`, :mod:`.store` and :mod:`.reclaim` (the interface)."""

from ...job.errors import ConfigError

try:
    import confluent_kafka  # noqa: F401
except ImportError:
    raise ConfigError("--transport kafka needs the Python package confluent-kafka: pip install "
                      "'.[kafka]' in a checkout") from None

from .settings import KafkaSettings, Topics  # noqa: E402
from .statelog import KafkaUnavailable  # noqa: E402
from .transport import KafkaDelivery, KafkaTransport  # noqa: E402

__all__ = ["KafkaDelivery", "KafkaSettings", "KafkaTransport", "KafkaUnavailable", "Topics"]
