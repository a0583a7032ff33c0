"""The default of every setting of the worker, in one table: the command line's options
(``--help``, the man page, the README's table), :class:`~guestkit_worker.runtime.config.WorkerConfig`
for a worker built in a program, the transports' constructors and the HTTP servers' bounds all
read them from here, so they cannot disagree.  A module of constants only: it imports nothing,
and every layer may import it."""

#: --jobs-dir and --results-dir (file transport), --work-dir: relative to the working directory
DEFAULT_JOBS_DIR = "./jobs"
DEFAULT_RESULTS_DIR = "./results"
DEFAULT_WORK_DIR = "./work"
#: --pool: jobs routed to another pool are left alone
DEFAULT_POOL = "default"
#: --transport: a jobs directory
DEFAULT_TRANSPORT = "file"
#: --max-concurrent: jobs run at once
DEFAULT_MAX_CONCURRENT = 4
#: --poll-interval (seconds): how often the jobs directory is listed while idle
DEFAULT_POLL_INTERVAL = 1.0
#: --shutdown-timeout (seconds): how long running jobs may finish after SIGTERM
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
#: --max-job-size (bytes): job documents larger than this are refused unread
DEFAULT_MAX_JOB_BYTES = 1024 * 1024
#: --min-free-space (bytes): /health's disk_space floor
DEFAULT_MIN_FREE_SPACE = 100 * 1024 * 1024
#: --metrics-addr: where /metrics and /health listen
DEFAULT_METRICS_ADDR = "0.0.0.0:9090"
#: --http-max-connections: connections the metrics port serves at once
DEFAULT_HTTP_MAX_CONNECTIONS = 64
#: --api-max-connections: API connections served at once; one more is answered 503 at once
DEFAULT_API_MAX_CONNECTIONS = 64
#: --api-max-waits: API requests waiting for a result (result?wait=) at once; one more gets 503
DEFAULT_API_MAX_WAITS = 32
#: --vuln-db-max-age (seconds, 7 days): a scan refuses a database whose newest record is older
DEFAULT_VULN_DB_MAX_AGE = 7 * 24 * 3600.0
#: --log-level and --log-format
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_LOG_FORMAT = "text"

# -- the Redis transport (--transport redis) --------------------------------------------------
#: --redis-url
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
#: --kafka-bootstrap-servers (--transport kafka)
DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "localhost:9092"
#: --lease-seconds: a running job's claim is renewed every lease/4
DEFAULT_LEASE_SECONDS = 60.0
#: --max-deliveries: entries delivered more often go to the dead letters
DEFAULT_MAX_DELIVERIES = 5
#: --result-ttl (seconds): how long results and job states are kept (7 days)
DEFAULT_RESULT_TTL = 7 * 24 * 3600
