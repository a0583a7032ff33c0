"""The worker's command-line options: the table of run options (each also read from
GUESTKIT_WORKER_<DEST>), the flag groups other commands share, and the functions that read
them (flag, else environment, else default).  :mod:`.main` builds the parser from them; the
command modules (:mod:`.run`, :mod:`.documents`, :mod:`.api`, :mod:`.jobs`, :mod:`.prune`)
read them."""

import argparse
import os
import sys

from ..settings import defaults as d
from .exitcodes import EXIT_USAGE
from .optiontypes import boolean as _bool
from .optiontypes import choice
from .optiontypes import duration as _duration
from .optiontypes import nonneg_float as _nonneg_float
from .optiontypes import positive_float as _positive_float
from .optiontypes import positive_int as _positive_int
from .optiontypes import size as _size

ENV_PREFIX = "GUESTKIT_WORKER_"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_transport = choice("file", "redis", "kafka")
_log_level = choice(*LOG_LEVELS, upper=True)
_kafka_protocol = choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", upper=True)
_kafka_sasl = choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", upper=True)
_log_format = choice("text", "json")


# (flags, dest, type, default, metavar, help) of the run options; each also reads GUESTKIT_WORKER_<DEST>
RUN_OPTIONS = [
    (("--worker-id",), "worker_id", str, None, "ID", "worker identity in results and metrics "
     "(default: host name plus a short random suffix)"),
    (("--pool",), "pool", str, d.DEFAULT_POOL, "NAME",
     "worker pool; jobs routed to another pool are left alone"),
    (("--transport",), "transport", _transport, d.DEFAULT_TRANSPORT, "file|redis|kafka",
     "where jobs come from and results go: a jobs directory, or a Redis stream or Kafka topics shared by "
     "a fleet"),
    (("--redis-url",), "redis_url", str, d.DEFAULT_REDIS_URL, "URL",
     "with --transport redis: redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"),
    (("--redis-password-file",), "redis_password_file", str, None, "FILE",
     "with --transport redis: the password is this file's first line (wins over the URL's)"),
    (("--redis-tls-ca-file",), "redis_tls_ca_file", str, None, "FILE",
     "with a rediss:// URL: verify the server's certificate against this CA (PEM) instead of the system's"),
    (("--redis-tls-cert-file",), "redis_tls_cert_file", str, None, "FILE",
     "with a rediss:// URL: the client certificate (PEM) for a Redis that requires one (tls-auth-clients)"),
    (("--redis-tls-key-file",), "redis_tls_key_file", str, None, "FILE",
     "with a rediss:// URL: the client certificate's private key (PEM; default: in the certificate file)"),
    (("--kafka-bootstrap-servers",), "kafka_bootstrap_servers", str, d.DEFAULT_KAFKA_BOOTSTRAP_SERVERS,
     "SERVERS", "with --transport kafka: HOST:PORT[,HOST:PORT...] of the brokers to start from; the "
     "pool lives in topics guestkit.POOL.jobs, guestkit.POOL.state and guestkit.POOL.dead"),
    (("--kafka-security-protocol",), "kafka_security_protocol", _kafka_protocol, None, "PROTOCOL",
     "with --transport kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default: SSL with "
     "--kafka-tls-ca-file, SASL_* with --kafka-sasl-mechanism)"),
    (("--kafka-sasl-mechanism",), "kafka_sasl_mechanism", _kafka_sasl, None, "MECHANISM",
     "with --transport kafka: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (needs --kafka-sasl-username and "
     "--kafka-sasl-password-file)"),
    (("--kafka-sasl-username",), "kafka_sasl_username", str, None, "NAME",
     "with --kafka-sasl-mechanism: the user name"),
    (("--kafka-sasl-password-file",), "kafka_sasl_password_file", str, None, "FILE",
     "with --kafka-sasl-mechanism: the password is this file's first line (never logged)"),
    (("--kafka-tls-ca-file",), "kafka_tls_ca_file", str, None, "FILE",
     "with --transport kafka: TLS to the brokers, their certificates checked against this CA (PEM)"),
    (("--lease-seconds",), "lease_seconds", _positive_float, d.DEFAULT_LEASE_SECONDS, "SECONDS",
     "with --transport redis or kafka: a running job's claim is renewed every lease/4; a worker silent for "
     "longer loses its jobs to the others"),
    (("--max-deliveries",), "max_deliveries", _positive_int, d.DEFAULT_MAX_DELIVERIES, "N",
     "with --transport redis or kafka: entries delivered more often go to the dead letters"),
    (("--result-ttl",), "result_ttl", _positive_int, d.DEFAULT_RESULT_TTL, "SECONDS",
     "with --transport redis or kafka: how long results and job states are kept"),
    (("--jobs-dir",), "jobs_dir", str, d.DEFAULT_JOBS_DIR, "DIR", "directory of incoming job files"),
    (("--results-dir",), "results_dir", str, d.DEFAULT_RESULTS_DIR, "DIR",
     "directory for result and progress files"),
    (("--work-dir",), "work_dir", str, d.DEFAULT_WORK_DIR, "DIR",
     "scratch and default output directory for handlers"),
    (("--max-concurrent",), "max_concurrent", _positive_int, d.DEFAULT_MAX_CONCURRENT, "N",
     "jobs run at once"),
    (("--poll-interval",), "poll_interval", _positive_float, d.DEFAULT_POLL_INTERVAL, "SECONDS",
     "how often the jobs dir is scanned"),
    (("--shutdown-timeout",), "shutdown_timeout", _nonneg_float, d.DEFAULT_SHUTDOWN_TIMEOUT, "SECONDS",
     "on SIGTERM, how long running jobs may finish before they are cancelled"),
    (("--max-job-timeout",), "max_job_timeout", _positive_float, None, "SECONDS",
     "cap on every job's execution.timeout_seconds"),
    (("--max-job-size",), "max_job_size", _positive_int, d.DEFAULT_MAX_JOB_BYTES, "BYTES",
     "job files larger than this are rejected unread"),
    (("--min-free-space",), "min_free_space", _size, d.DEFAULT_MIN_FREE_SPACE, "SIZE",
     "/health answers 503 (disk_space) when the results, jobs or work dir has less free space "
     "(bytes, 512M, 1G) or fewer than 1000 free inodes"),
    (("--allow-path",), "allow_path", str, None, "DIR", "image paths and outputs must resolve inside DIR "
     "(repeatable; the environment variable takes a colon-separated list); without it every image "
     "and output path is refused, and / allows every path"),
    (("--metrics-enabled",), "metrics_enabled", _bool, True, "true|false", "serve /metrics and /health"),
    (("--metrics-addr",), "metrics_addr", str, d.DEFAULT_METRICS_ADDR, "HOST:PORT",
     "listen address of /metrics and /health ([::]:PORT for IPv6 and dual stack)"),
    (("--http-max-connections",), "http_max_connections", _positive_int, d.DEFAULT_HTTP_MAX_CONNECTIONS, "N",
     "connections the HTTP port serves at once; when all are taken, an idle one or one still "
     "sending its request head, of the client address holding the most, makes room for a newcomer; "
     "when none can, newcomers get 503 at once"),
    (("--metrics-tls-cert",), "metrics_tls_cert", str, None, "FILE",
     "serve the endpoint over TLS with this certificate"),
    (("--metrics-tls-key",), "metrics_tls_key", str, None, "FILE", "private key for --metrics-tls-cert"),
    (("--metrics-token-file",), "metrics_token_file", str, None, "FILE", "/metrics answers only requests "
     "with one of this file's tokens (one a line) as Authorization: Bearer TOKEN; /health stays open"),
    (("--textfile-dir",), "textfile_dir", str, None, "DIR", "with --once: write DIR/guestkit_worker.prom "
     "for node_exporter's textfile collector"),
    (("--vuln-db",), "vuln_db", str, None, "DIR", "the offline OSV database of vulnerability scans: "
     "DIR/<Ecosystem>/all.zip as OSV publishes them and/or *.json records; without it a scan fails "
     "with VULN_DB_UNAVAILABLE"),
    (("--vuln-db-max-age",), "vuln_db_max_age", _duration, d.DEFAULT_VULN_DB_MAX_AGE, "DURATION",
     "a scan fails with VULN_DB_STALE when the database's newest record is older than this "
     "(7d, 12h, 3600; 0 = no limit)"),
    (("--log-level",), "log_level", _log_level, d.DEFAULT_LOG_LEVEL, "LEVEL",
     "DEBUG, INFO, WARNING or ERROR"),
    (("--log-format",), "log_format", _log_format, d.DEFAULT_LOG_FORMAT, "text|json",
     "log lines as text, or as JSON objects (time, level, worker_id, job_id, event, message)"),
]
#: (flags, dest, type, default, metavar, help): the API options of ``run`` and ``api``, in the
#: same form as RUN_OPTIONS (each also reads GUESTKIT_WORKER_<DEST>)
API_OPTIONS = [
    (("--api-addr",), "api_addr", str, None, "HOST:PORT", "serve the REST API on this address "
     "([::]:PORT for IPv6; off when not given; beyond loopback it needs --api-token-file and --allow-path)"),
    (("--api-token-file",), "api_token_file", str, None, "FILE", "bearer tokens the API accepts, one a line"),
    (("--api-tls-cert",), "api_tls_cert", str, None, "FILE", "serve the API over TLS with this certificate"),
    (("--api-tls-key",), "api_tls_key", str, None, "FILE", "private key for --api-tls-cert"),
    (("--api-client-ca",), "api_client_ca", str, None, "FILE", "require API clients to present a "
     "certificate signed by a CA in FILE"),
    (("--api-max-connections",), "api_max_connections", _positive_int, d.DEFAULT_API_MAX_CONNECTIONS, "N",
     "API connections served at once; more are answered 503 at once"),
    (("--api-max-waits",), "api_max_waits", _positive_int, d.DEFAULT_API_MAX_WAITS, "N",
     "API requests waiting for a result (result?wait=) at once; more get 503"),
]
RUN_OPTIONS += API_OPTIONS  # --api-*: the REST API beside the jobs (and for the api command)
#: the run options that also apply to ``api`` (the API alone over the same transport)
#: (every one but those about running jobs, so a transport's own options apply to both)
API_COMMAND_OPTIONS = {o[1] for o in RUN_OPTIONS} - {"work_dir", "max_concurrent", "poll_interval",
                                                     "shutdown_timeout", "max_job_timeout", "textfile_dir",
                                                     "min_free_space", "vuln_db", "vuln_db_max_age"}
#: (flags, dest, type, default, metavar, help): how the job commands (status, result, list,
#: cancel, submit) reach a worker's REST API; each also reads GUESTKIT_WORKER_<DEST>
API_CLIENT_OPTIONS = [
    (("--api",), "api_url", str, None, "URL", "the API's base URL, e.g. http://127.0.0.1:8080; without "
     "it the command acts on the local jobs and results directories"),
    (("--api-token-file",), "api_token_file", str, None, "FILE",
     "send the first token of FILE as a bearer token"),
    (("--api-ca",), "api_ca", str, None, "FILE", "CA certificates to check an https:// API against"),
    (("--api-client-cert",), "api_client_cert", str, None, "FILE",
     "client certificate for an API run with --api-client-ca"),
    (("--api-client-key",), "api_client_key", str, None, "FILE", "private key of --api-client-cert"),
]
#: the Kafka transport's settings (WorkerConfig fields of the same names)
KAFKA_OPTIONS = ("kafka_bootstrap_servers", "kafka_security_protocol", "kafka_sasl_mechanism",
                 "kafka_sasl_username", "kafka_sasl_password_file", "kafka_tls_ca_file")
#: the run options of a command that talks to the queue without running jobs (submit, status,
#: result, list, cancel): the transport, where it is and the limits its documents are held to
QUEUE_OPTIONS = ("transport", "redis_url", "redis_password_file", "redis_tls_ca_file", "redis_tls_cert_file",
                 "redis_tls_key_file", *KAFKA_OPTIONS, "pool", "jobs_dir", "results_dir", "lease_seconds",
                 "max_deliveries", "result_ttl", "max_job_size")


def env_name(dest: str) -> str:
    """The environment variable of a table's option: GUESTKIT_WORKER_<DEST>."""
    return ENV_PREFIX + dest.upper()


def add_options(p, table: list, only=None) -> None:
    """Add the options of ``table`` (those whose dest is in ``only``, default all) to ``p``; each
    parses to None when not given (:func:`setting` then reads the environment or the default),
    and its help names the default and the variable."""
    for flags, dest, typ, default, metavar, text in table:
        if only is not None and dest not in only:
            continue
        shown = f"default: {default}; " if default is not None else ""
        p.add_argument(*flags, dest=dest, type=typ, default=None, metavar=metavar,
                       action="append" if dest == "allow_path" else "store",
                       help=f"{text} ({shown}env {env_name(dest)})")


def add_run_options(p, only=None) -> None:
    """The run options (only those whose dest is in ``only``), and without ``only`` --once and
    --allow-backing-files too."""
    if only is None:
        p.add_argument("--once", action="store_true", default=None,
                       help=f"run the jobs present at start, wait for them, exit (env {env_name('once')})")
        add_allow_backing(p)
    add_options(p, RUN_OPTIONS, only)


def setting(args: argparse.Namespace, dest: str, table: list = RUN_OPTIONS):
    """The value of the option ``dest`` of ``table``: its flag, else GUESTKIT_WORKER_<DEST>
    (empty counts as unset) read with the option's type, else its default.  A bad value in the
    environment ends the command as a usage error (exit 2) naming the variable."""
    flags, dest, typ, default, metavar, text = next(o for o in table if o[1] == dest)
    value = getattr(args, dest, None)
    if value is not None:
        return value
    env = os.environ.get(env_name(dest))
    if not env:
        return default
    try:
        return path_list(env) if dest == "allow_path" else typ(env)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(usage_error(f"{env_name(dest)}: {exc}")) from None


def _flag(args, dest: str) -> bool:
    """A store_true flag, else GUESTKIT_WORKER_<DEST> as true/false, else off."""
    if getattr(args, dest, None):
        return True
    env = os.environ.get(env_name(dest))
    try:
        return _bool(env) if env else False
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(usage_error(f"{env_name(dest)}: {exc}")) from None


def add_allow_backing(p) -> None:
    p.add_argument("--allow-backing-files", dest="allow_backing_files", action="store_true", default=None,
                   help="let images reference other local files (qcow2 backing and data files, VMDK extents "
                        "and parents), each of which must resolve inside --allow-path and be a regular file; "
                        "without it such images are refused with BACKING_FILE_NOT_ALLOWED "
                        f"(env {env_name('allow_backing_files')}=true)")


def allow_backing(args: argparse.Namespace) -> bool:
    """--allow-backing-files, else GUESTKIT_WORKER_ALLOW_BACKING_FILES (true/false), else off."""
    return _flag(args, "allow_backing_files")


def add_allow_path(p) -> None:
    """--allow-path for validate and submit: judge paths as a worker with that policy would."""
    p.add_argument("--allow-path", dest="allow_path", action="append", default=None, metavar="DIR",
                   help="judge image paths and outputs as a worker run with this --allow-path would "
                        f"(repeatable; env {env_name('allow_path')}, colon-separated)")
    add_allow_backing(p)


def add_queue_options(p) -> None:
    """The transport, Redis, pool, directory and size flags of a command that submits or reads
    jobs: the same flags and environment variables as run."""
    add_options(p, RUN_OPTIONS, QUEUE_OPTIONS)


def add_api_client_options(p) -> None:
    """--api and how to reach it, in their own group of the command's --help."""
    add_options(p.add_argument_group("talking to a worker's REST API"), API_CLIENT_OPTIONS)


def transport_settings(args: argparse.Namespace) -> dict:
    """WorkerConfig's transport fields from resolved run options."""
    return {"transport": args.transport, "redis_url": args.redis_url,
            "redis_password_file": args.redis_password_file, "redis_tls_ca_file": args.redis_tls_ca_file,
            "redis_tls_cert_file": args.redis_tls_cert_file, "redis_tls_key_file": args.redis_tls_key_file,
            **{dest: getattr(args, dest) for dest in KAFKA_OPTIONS}, "lease_seconds": args.lease_seconds,
            "max_deliveries": args.max_deliveries, "result_ttl": args.result_ttl}


def queue_config(args: argparse.Namespace, worker_id: str):
    """A WorkerConfig for a command that only talks to the queue: each setting from its flag,
    else GUESTKIT_WORKER_*, else the run option's default."""
    from ..runtime.config import WorkerConfig
    values = {dest: setting(args, dest) for dest in QUEUE_OPTIONS}
    values["max_job_bytes"] = values.pop("max_job_size")
    return WorkerConfig(worker_id=worker_id, **values)


def path_list(value: str) -> list:
    """GUESTKIT_WORKER_ALLOW_PATH: colon-separated directories, empty parts ignored."""
    return [p for p in value.split(":") if p]


def allowed_paths(args: argparse.Namespace):
    """--allow-path (repeated), else GUESTKIT_WORKER_ALLOW_PATH, else None."""
    return setting(args, "allow_path")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options not given on the command line from GUESTKIT_WORKER_* or the default."""
    for option in RUN_OPTIONS:
        setattr(args, option[1], setting(args, option[1]))
    if args.once is None:
        args.once = _flag(args, "once")
    return args


def setup_logging(args: argparse.Namespace) -> None:
    """Logging as --log-level and --log-format say, every record stamped with the worker id."""
    from .logsetup import setup
    setup(args.log_level, args.log_format, worker_id=args.worker_id)


def usage_error(message: str) -> int:
    """Print a one-line usage error (no traceback) and give the exit status for it."""
    print(f"guestkit-worker: error: {message}", file=sys.stderr)
    return EXIT_USAGE
