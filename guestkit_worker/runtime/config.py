"""The worker's configuration: everything the CLI fills in from flags and the environment."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field

from ..settings import defaults as d


def default_worker_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerConfig:
    """One worker's settings.  ``transport`` names the job transport (see
    guestkit_worker.transports.open_transport); jobs_dir and results_dir are the file
    transport's."""

    jobs_dir: str = d.DEFAULT_JOBS_DIR
    results_dir: str = d.DEFAULT_RESULTS_DIR
    work_dir: str = d.DEFAULT_WORK_DIR
    worker_id: str = field(default_factory=default_worker_id)
    pool: str = d.DEFAULT_POOL
    max_concurrent: int = d.DEFAULT_MAX_CONCURRENT
    poll_interval: float = d.DEFAULT_POLL_INTERVAL
    shutdown_timeout: float = d.DEFAULT_SHUTDOWN_TIMEOUT
    max_job_timeout: float | None = None
    max_job_bytes: int = d.DEFAULT_MAX_JOB_BYTES
    #: /health's disk_space check: 503 when a written directory has less free space
    min_free_space: int = d.DEFAULT_MIN_FREE_SPACE
    allow_paths: list | None = None
    allow_backing_files: bool = False
    once: bool = False
    metrics_enabled: bool = True
    durable: bool = True
    transport: str = d.DEFAULT_TRANSPORT
    #: the Redis transport's settings (README "A fleet on Redis")
    redis_url: str = d.DEFAULT_REDIS_URL
    redis_password_file: str | None = None
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    #: the Kafka transport's settings (README "A fleet on Kafka")
    kafka_bootstrap_servers: str = d.DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password_file: str | None = None
    kafka_tls_ca_file: str | None = None
    lease_seconds: float = d.DEFAULT_LEASE_SECONDS
    max_deliveries: int = d.DEFAULT_MAX_DELIVERIES
    result_ttl: int = d.DEFAULT_RESULT_TTL
    #: the offline OSV database of vulnerability scans (--vuln-db) and its age limit (0: none)
    vuln_db: str | None = None
    vuln_db_max_age: float = d.DEFAULT_VULN_DB_MAX_AGE

    def timeout_of(self, job) -> float:
        """A job's timeout under --max-job-timeout."""
        t = job.timeout_seconds
        return min(t, self.max_job_timeout) if self.max_job_timeout else t
