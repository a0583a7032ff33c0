"""Job transports: the interface in :mod:`.base`; the file transport in :mod:`.files`; the
Redis Streams transport in :mod:`.redis` (needs the ``redis`` extra); the Kafka transport in
:mod:`.kafka` (needs the ``kafka`` extra); the in-memory transport
in :mod:`.memory`, for tests and embedding only (a program hands it to the Worker itself).

:func:`open_transport` is the one place a transport is chosen from the configuration: a new
transport adds its name here (and its flags to the CLI).  ``memory`` is not among them: it
keeps nothing beyond its process, which an operator's worker cannot use."""

from __future__ import annotations

from typing import Any

from .base import Transport, TransportObserver

#: transport names the configuration may choose
TRANSPORTS = ("file", "redis", "kafka")


def open_transport(config: Any, *, metrics: TransportObserver | None = None) -> Transport:
    """Build (not yet open) the transport config.transport names: ``file`` (the default; also
    spelt ``files``), ``redis`` or ``kafka``.  metrics: a :class:`~.base.TransportObserver`, where a
    transport reports what only it sees (reclaims, lost leases, dead letters, its errors)."""
    name = getattr(config, "transport", None) or "file"
    if name == "redis":
        from .redis import RedisTransport  # imports redis-py, only now
        return RedisTransport(config.redis_url, config.worker_id, pool=config.pool,
                              password_file=config.redis_password_file, tls_ca_file=config.redis_tls_ca_file,
                              tls_cert_file=config.redis_tls_cert_file,
                              tls_key_file=config.redis_tls_key_file, lease_seconds=config.lease_seconds,
                              max_deliveries=config.max_deliveries, result_ttl=config.result_ttl,
                              max_job_bytes=config.max_job_bytes, metrics=metrics)
    if name == "kafka":
        return _kafka(config, metrics)
    if name in ("file", "files"):
        from .files import FileTransport
        return FileTransport(config.jobs_dir, config.results_dir, config.worker_id,
                             max_job_bytes=config.max_job_bytes, durable=config.durable, once=config.once,
                             poll_interval=config.poll_interval, observer=metrics,
                             pool=getattr(config, "pool", None))
    from ..job.errors import ConfigError
    if name == "memory":
        raise ConfigError("transport 'memory' keeps jobs inside one process: it is for tests and "
                          "embedding (give the Worker a MemoryTransport), not a configuration choice; "
                          "use file, redis or kafka")
    raise ConfigError(f"unknown transport {name!r} (known: {', '.join(TRANSPORTS)})")


def _kafka(config: Any, metrics: TransportObserver | None) -> Transport:
    """The Kafka transport of config (imports confluent-kafka, only now: ConfigError naming the
    extra when it is not installed)."""
    from .kafka import KafkaSettings, KafkaTransport
    settings = KafkaSettings(config.kafka_bootstrap_servers, config.kafka_security_protocol,
                             config.kafka_sasl_mechanism, config.kafka_sasl_username,
                             config.kafka_sasl_password_file, config.kafka_tls_ca_file)
    return KafkaTransport(settings, config.worker_id, pool=config.pool, lease_seconds=config.lease_seconds,
                          max_deliveries=config.max_deliveries, result_ttl=config.result_ttl,
                          max_job_bytes=config.max_job_bytes, observer=metrics)
