"""The worker's configuration: everything the CLI fills in from flags and the environment."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field

from ..job.protocol import DEFAULT_MAX_JOB_BYTES
from ..system.diskspace import DEFAULT_MIN_FREE_SPACE


def default_worker_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerConfig:
    """One worker's settings.  ``transport`` names the job transport (see
    guestkit_worker.transports.open_transport); jobs_dir and results_dir are the file
    transport's."""

    jobs_dir: str = "jobs"
    results_dir: str = "results"
    work_dir: str = "work"
    worker_id: str = field(default_factory=default_worker_id)
    pool: str = "default"
    max_concurrent: int = 4
    poll_interval: float = 1.0
    shutdown_timeout: float = 30.0
    max_job_timeout: float | None = None
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES
    #: /health's disk_space check: 503 when a written directory has less free space
    min_free_space: int = DEFAULT_MIN_FREE_SPACE
    allow_paths: list | None = None
    allow_backing_files: bool = False
    once: bool = False
    metrics_enabled: bool = True
    durable: bool = True
    transport: str = "file"
    #: the Redis transport's settings (README "A fleet on Redis")
    redis_url: str = "redis://localhost:6379/0"
    redis_password_file: str | None = None
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    lease_seconds: float = 60.0
    max_deliveries: int = 5
    result_ttl: int = 7 * 24 * 3600

    def timeout_of(self, job) -> float:
        """A job's timeout under --max-job-timeout."""
        t = job.timeout_seconds
        return min(t, self.max_job_timeout) if self.max_job_timeout else t
