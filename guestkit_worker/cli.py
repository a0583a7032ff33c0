"""Command line: ``guestkit-worker [run|submit|validate|list-operations]``.

:func:`get_parser` only builds the parser (argparse-manpage imports it); reading the
environment, logging set-up and everything else happens in :func:`main`.
"""

import argparse
import logging
import os
import sys

from . import __version__
from .api_command import API_OPTIONS
from .optiontypes import boolean as _bool, choice, nonneg_float as _nonneg_float
from .optiontypes import positive_float as _positive_float, positive_int as _positive_int, size as _size

log = logging.getLogger(__name__)

#: every job completed (or was a duplicate of a completed one); a daemon stopped cleanly
EXIT_OK = 0
#: --once: at least one job failed, timed out, was rejected or cancelled; validate: a file is invalid
EXIT_JOBS_FAILED = 1
#: usage or configuration error (bad flag, port in use, unwritable directory)
EXIT_USAGE = 2
#: --once --textfile-dir: the run's metrics could not be written at the end (not a success)
EXIT_TEXTFILE = 3
#: a second SIGTERM/SIGINT stopped the worker at once
EXIT_ABORTED = 130

ENV_PREFIX = "GUESTKIT_WORKER_"
COMMANDS = ("run", "api", "submit", "validate", "list-operations", "status", "result", "list", "cancel", "prune")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_transport = choice("file", "redis")
_log_level = choice(*LOG_LEVELS, upper=True)
_log_format = choice("text", "json")


# (flags, dest, type, default, metavar, help) of the run options; each also reads GUESTKIT_WORKER_<DEST>
RUN_OPTIONS = [
    (("--worker-id",), "worker_id", str, None, "ID", "worker identity in results and metrics "
     "(default: host name plus a short random suffix)"),
    (("--pool",), "pool", str, "default", "NAME", "worker pool; jobs routed to another pool are left alone"),
    (("--transport",), "transport", _transport, "file", "file|redis",
     "where jobs come from and results go: a jobs directory, or a Redis stream shared by a fleet"),
    (("--redis-url",), "redis_url", str, "redis://localhost:6379/0", "URL",
     "with --transport redis: redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"),
    (("--redis-password-file",), "redis_password_file", str, None, "FILE",
     "with --transport redis: the password is this file's first line (wins over the URL's)"),
    (("--lease-seconds",), "lease_seconds", _positive_float, 60.0, "SECONDS",
     "with --transport redis: a running job's claim is renewed every lease/4; a worker silent for "
     "longer loses its jobs to the others"),
    (("--max-deliveries",), "max_deliveries", _positive_int, 5, "N",
     "with --transport redis: entries delivered more often go to the dead letters"),
    (("--result-ttl",), "result_ttl", _positive_int, 604800, "SECONDS",
     "with --transport redis: how long results and job states are kept"),
    (("--jobs-dir",), "jobs_dir", str, "./jobs", "DIR", "directory of incoming job files"),
    (("--results-dir",), "results_dir", str, "./results", "DIR", "directory for result and progress files"),
    (("--work-dir",), "work_dir", str, "./work", "DIR", "scratch and default output directory for handlers"),
    (("--max-concurrent",), "max_concurrent", _positive_int, 4, "N", "jobs run at once"),
    (("--poll-interval",), "poll_interval", _positive_float, 1.0, "SECONDS", "how often the jobs dir is scanned"),
    (("--shutdown-timeout",), "shutdown_timeout", _nonneg_float, 30.0, "SECONDS",
     "on SIGTERM, how long running jobs may finish before they are cancelled"),
    (("--max-job-timeout",), "max_job_timeout", _positive_float, None, "SECONDS",
     "cap on every job's execution.timeout_seconds"),
    (("--max-job-size",), "max_job_size", _positive_int, 1048576, "BYTES",
     "job files larger than this are rejected unread"),
    (("--min-free-space",), "min_free_space", _size, 104857600, "SIZE", "/health answers 503 (disk_space) when "
     "the results, jobs or work dir has less free space (bytes, 512M, 1G) or fewer than 1000 free inodes"),
    (("--allow-path",), "allow_path", str, None, "DIR", "image paths and outputs must resolve inside DIR "
     "(repeatable; the environment variable takes a colon-separated list); without it every image "
     "and output path is refused, and / allows every path"),
    (("--metrics-enabled",), "metrics_enabled", _bool, True, "true|false", "serve /metrics and /health"),
    (("--metrics-addr",), "metrics_addr", str, "0.0.0.0:9090", "HOST:PORT",
     "listen address of /metrics and /health ([::]:PORT for IPv6 and dual stack)"),
    (("--http-max-connections",), "http_max_connections", _positive_int, 64, "N",
     "connections the HTTP port serves at once; the longest-idle one makes room for a newcomer, "
     "and when all are busy newcomers get 503 at once"),
    (("--metrics-tls-cert",), "metrics_tls_cert", str, None, "FILE", "serve the endpoint over TLS with this certificate"),
    (("--metrics-tls-key",), "metrics_tls_key", str, None, "FILE", "private key for --metrics-tls-cert"),
    (("--metrics-token-file",), "metrics_token_file", str, None, "FILE", "/metrics answers only requests "
     "with one of this file's tokens (one a line) as Authorization: Bearer TOKEN; /health stays open"),
    (("--textfile-dir",), "textfile_dir", str, None, "DIR", "with --once: write DIR/guestkit_worker.prom "
     "for node_exporter's textfile collector"),
    (("--log-level",), "log_level", _log_level, "INFO", "LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    (("--log-format",), "log_format", _log_format, "text", "text|json",
     "log lines as text, or as JSON objects (time, level, worker_id, job_id, event, message)"),
]
RUN_OPTIONS += API_OPTIONS  # --api-*: the REST API beside the jobs (and for the api command)
#: the run options that also apply to ``api`` (the API alone over the same transport)
#: (every one but those about running jobs, so a transport's own options apply to both)
API_COMMAND_OPTIONS = {o[1] for o in RUN_OPTIONS} - {"work_dir", "max_concurrent", "poll_interval", "shutdown_timeout",
                                                     "max_job_timeout", "textfile_dir", "min_free_space"}


def _env_name(dest):
    return ENV_PREFIX + dest.upper()


def _add_run_options(p, only=None):
    if only is None:
        p.add_argument("--once", action="store_true", default=None,
                       help=f"run the jobs present at start, wait for them, exit (env {_env_name('once')})")
        _add_allow_backing(p)
    for flags, dest, typ, default, metavar, text in RUN_OPTIONS:
        if only is not None and dest not in only:
            continue
        shown = f"default: {default}; " if default is not None else ""
        p.add_argument(*flags, dest=dest, type=typ, default=None, metavar=metavar,
                       action="append" if dest == "allow_path" else "store",
                       help=f"{text} ({shown}env {_env_name(dest)})")


def _add_allow_backing(p):
    p.add_argument("--allow-backing-files", dest="allow_backing_files", action="store_true", default=None,
                   help="let images reference other local files (qcow2 backing and data files, VMDK extents "
                        "and parents), each of which must resolve inside --allow-path and be a regular file; "
                        "without it such images are refused with BACKING_FILE_NOT_ALLOWED "
                        f"(env {_env_name('allow_backing_files')}=true)")


def _allow_backing(args):
    """--allow-backing-files, else GUESTKIT_WORKER_ALLOW_BACKING_FILES (true/false), else off."""
    if getattr(args, "allow_backing_files", None):
        return True
    env = os.environ.get(_env_name("allow_backing_files"))
    try:
        return _bool(env) if env else False
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(_usage_error(f"{_env_name('allow_backing_files')}: {exc}"))


def _add_allow_path(p):
    """--allow-path for validate and submit: judge paths as a worker with that policy would."""
    p.add_argument("--allow-path", dest="allow_path", action="append", default=None, metavar="DIR",
                   help="judge image paths and outputs as a worker run with this --allow-path would "
                        f"(repeatable; env {_env_name('allow_path')}, colon-separated)")
    _add_allow_backing(p)


#: the run options of a command that only talks to the queue (submit, status, result, list, cancel)
TRANSPORT_OPTIONS = ("transport", "redis_url", "redis_password_file", "pool")
#: ...and what such a command reads from the environment or defaults without a flag
_QUEUE_SETTINGS = TRANSPORT_OPTIONS + ("jobs_dir", "results_dir", "lease_seconds", "max_deliveries",
                                       "result_ttl", "max_job_size")


def add_transport_options(p):
    """--transport, --redis-url, --redis-password-file and --pool for a command that submits or
    reads jobs: the same flags and environment variables as run."""
    for flags, dest, typ, default, metavar, text in RUN_OPTIONS:
        if dest in TRANSPORT_OPTIONS:
            shown = f"default: {default}; " if default is not None else ""
            p.add_argument(*flags, dest=dest, type=typ, default=None, metavar=metavar,
                           help=f"{text} ({shown}env {_env_name(dest)})")


def transport_settings(args):
    """WorkerConfig's transport fields from resolved run options."""
    return {"transport": args.transport, "redis_url": args.redis_url,
            "redis_password_file": args.redis_password_file, "lease_seconds": args.lease_seconds,
            "max_deliveries": args.max_deliveries, "result_ttl": args.result_ttl}


def queue_config(args, worker_id):
    """A WorkerConfig for a command that only talks to the queue: each setting from its flag
    (when the command has it), else GUESTKIT_WORKER_*, else the run option's default."""
    from .config import WorkerConfig
    values = {}
    for flags, dest, typ, default, metavar, text in RUN_OPTIONS:
        if dest not in _QUEUE_SETTINGS:
            continue
        value = getattr(args, dest, None)
        if value is None:
            env = os.environ.get(_env_name(dest))
            try:
                value = typ(env) if env else default
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(_usage_error(f"{_env_name(dest)}: {exc}"))
        values[dest] = value
    values["max_job_bytes"] = values.pop("max_job_size")
    return WorkerConfig(worker_id=worker_id, **values)


def _path_list(value):
    """GUESTKIT_WORKER_ALLOW_PATH: colon-separated directories, empty parts ignored."""
    return [p for p in value.split(":") if p]


def _allowed_paths(args):
    if args.allow_path is not None:
        return args.allow_path
    env = os.environ.get(_env_name("allow_path"))
    return _path_list(env) if env else None


def get_parser():
    """Build the argument parser; no side effects (argparse-manpage imports this)."""
    parser = argparse.ArgumentParser(
        prog="guestkit-worker",
        description="Run guestkit job protocol v1.0 jobs (VM disk inspection and conversion) from a jobs "
                    "directory, with Prometheus metrics, a health endpoint and cron-friendly one-shot runs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the worker (the default command)",
                         description="Run the worker: claim job files, run their handlers, write results.")
    _add_run_options(run)
    run.add_argument("--list-operations", action="store_true",
                     help="print each operation and whether its engine is installed, then exit")
    api = sub.add_parser("api", help="serve the REST API alone (no job threads) over the jobs and results dirs",
                         description="Serve the REST API (--api-addr) in front of the jobs and results "
                                     "directories, without running jobs: a gateway for the workers that share them.")
    _add_run_options(api, only=API_COMMAND_OPTIONS)
    _add_allow_backing(api)
    api.set_defaults(once=False)
    submit = sub.add_parser("submit", help="validate job files and queue them (jobs dir, or --api URL)",
                            description="Validate each JOB and place it in the jobs directory as JOB_ID.json "
                                        "(written beside, then renamed), so the worker never reads it half-way; "
                                        "with --api, POST it to a worker's REST API instead.")
    submit.add_argument("jobs", nargs="+", metavar="JOB.json", help="job documents to submit ('-' reads standard input)")
    submit.add_argument("--wait", type=float, nargs="?", const=3600.0, default=0, metavar="SECONDS",
                        help="then wait up to SECONDS (default 3600) for every job to finish; exit 0 only if all "
                             "completed")
    submit.add_argument("--results-dir", dest="results_dir", default=None, metavar="DIR",
                        help=f"with --wait and no --api: results directory (default: ./results; "
                             f"env {_env_name('results_dir')})")
    submit.add_argument("--jobs-dir", dest="jobs_dir", default=None, metavar="DIR",
                        help=f"jobs directory (default: ./jobs; env {_env_name('jobs_dir')})")
    _add_allow_path(submit)
    add_transport_options(submit)
    validate = sub.add_parser("validate", help="check job files and print every problem",
                              description="Check each FILE against the job protocol and the operations this "
                                          "worker serves; print one line per file; exit 1 if any is invalid.")
    validate.add_argument("files", nargs="+", metavar="FILE", help="job documents")
    _add_allow_path(validate)
    sub.add_parser("list-operations", help="print each operation and whether its engine is installed",
                   description="Print each operation this worker serves and whether its engine is installed.")
    from .commands import add_api_client_options, add_client_commands
    add_api_client_options(submit)
    add_client_commands(sub)
    from .prune import add_prune_command
    add_prune_command(sub, _env_name)
    return parser


def _resolve(args):
    """Fill options not given on the command line from GUESTKIT_WORKER_* or the default."""
    for flags, dest, typ, default, metavar, text in RUN_OPTIONS:
        if getattr(args, dest, None) is not None:
            continue
        env = os.environ.get(_env_name(dest))
        if env is not None and env != "":
            try:
                value = _path_list(env) if dest == "allow_path" else typ(env)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(_usage_error(f"{_env_name(dest)}: {exc}"))
        else:
            value = default
        setattr(args, dest, value)
    if args.once is None:
        env = os.environ.get(_env_name("once"))
        try:
            args.once = _bool(env) if env else False
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(_usage_error(f"{_env_name('once')}: {exc}"))
    return args


def _usage_error(message):
    print(f"guestkit-worker: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _setup_logging(args):
    from .logsetup import setup
    setup(args.log_level, args.log_format, worker_id=args.worker_id)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_parser()
    commands = _commands(parser)
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        return _usage_error(f"unknown command {argv[0]!r} (commands: {', '.join(commands)}; "
                            "run 'guestkit-worker COMMAND --help' for one)")
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    if args.command == "submit":
        from .commands import cmd_submit_jobs
        return cmd_submit_jobs(args, cmd_submit, _allowed_paths(args))
    if args.command in ("status", "result", "list", "cancel"):
        from .commands import cmd_client
        return cmd_client(args)
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "prune":
        from .prune import cmd_prune
        return cmd_prune(args, _env_name, _usage_error)
    if args.command == "list-operations" or getattr(args, "list_operations", False):
        return cmd_list_operations()
    args = _resolve(args)
    if args.command == "api":
        _setup_logging(args)
        from .api_command import cmd_api
        return cmd_api(args, _usage_error)
    args.metrics_addr_given = any(a == "--metrics-addr" or a.startswith("--metrics-addr=") for a in argv) \
        or bool(os.environ.get(_env_name("metrics_addr")))
    return cmd_run(args)


def _commands(parser):
    """The command names the parser has (a command added to get_parser is listed by itself)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return list(COMMANDS)


def cmd_list_operations():
    from .handlers import default_registry
    reg = default_registry()
    for op in reg.operations:
        handler = reg.get(op)
        try:
            ok, detail = handler.engine_status()
        except Exception as exc:
            ok, detail = False, str(exc)
        print(f"{op:<20} {'available' if ok else 'UNAVAILABLE':<12} {detail}")
    return EXIT_OK


def _check_file(path, registry):
    """List of problems of one job file (empty when valid), and the parsed job: the worker's
    own admission verdict (guestkit_worker.admission)."""
    from .admission import problems
    from .protocol import DEFAULT_MAX_JOB_BYTES
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(DEFAULT_MAX_JOB_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(DEFAULT_MAX_JOB_BYTES + 1)
    except OSError as exc:
        return [f"cannot read: {exc.strerror}"], None
    return problems(raw, registry, DEFAULT_MAX_JOB_BYTES)


def cmd_validate(args):
    from .handlers import default_registry
    reg = default_registry()
    reg.configure_paths(_allowed_paths(args), allow_backing=_allow_backing(args))
    bad = 0
    for path in args.files:
        problems, job = _check_file(path, reg)
        if problems:
            bad += 1
            for problem in problems:
                print(f"{path}: {problem}")
        else:
            print(f"{path}: ok ({job.job_id}, {job.operation})")
    return EXIT_JOBS_FAILED if bad else EXIT_OK


def cmd_submit(args):
    from .handlers import default_registry
    from .errors import ConfigError
    from .preflight import existing_dir
    cfg = queue_config(args, f"submit-{os.getpid()}")
    try:  # a typo must not create a directory no worker reads
        if cfg.transport == "file":
            existing_dir("--jobs-dir", cfg.jobs_dir)
    except ConfigError as exc:
        return _usage_error(str(exc))
    reg = default_registry()
    reg.configure_paths(_allowed_paths(args), allow_backing=_allow_backing(args))
    problems, job = _check_file(args.job, reg)
    if problems:
        for problem in problems:
            print(f"{args.job}: {problem}", file=sys.stderr)
        return EXIT_JOBS_FAILED
    from .transports import open_transport
    try:
        receipt = open_transport(cfg).submit(job.doc)
    except ConfigError as exc:
        return _usage_error(str(exc))
    except OSError as exc:
        print(f"{args.job}: cannot queue it: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if receipt.outcome == "exists":
        print(f"{args.job}: job {job.job_id} was submitted before ({receipt.status}: {receipt.location})",
              file=sys.stderr)
        return EXIT_JOBS_FAILED
    if receipt.outcome == "conflict":
        print(f"{args.job}: job id {job.job_id} is already used by another job ({receipt.status}: "
              f"{receipt.location})", file=sys.stderr)
        return EXIT_JOBS_FAILED
    print(receipt.location)
    return EXIT_OK


def cmd_run(args):
    from .worker import default_worker_id
    args.worker_id = args.worker_id or default_worker_id()  # known to every log record
    _setup_logging(args)
    # handlers first: a SIGTERM during start-up (loading handlers, recovery, binding) is a clean,
    # logged stop instead of the default action's silent death
    from .signals import SignalWatcher
    signals = SignalWatcher(None, shutdown_timeout=args.shutdown_timeout).install()
    from prometheus_client import REGISTRY, disable_created_metrics

    from .errors import ConfigError
    from .worker import Worker, WorkerConfig
    disable_created_metrics()
    if args.textfile_dir and not args.once:
        return _usage_error("--textfile-dir needs --once (a daemon is scraped on /metrics instead)")
    if bool(args.metrics_tls_cert) != bool(args.metrics_tls_key):
        return _usage_error("--metrics-tls-cert and --metrics-tls-key go together")
    from .api_command import check_api_options, start_worker_api
    try:
        check_api_options(args)
    except ConfigError as exc:
        return _usage_error(str(exc))
    cfg = WorkerConfig(jobs_dir=args.jobs_dir, results_dir=args.results_dir, work_dir=args.work_dir,
                       worker_id=args.worker_id, pool=args.pool, max_concurrent=args.max_concurrent,
                       poll_interval=args.poll_interval, shutdown_timeout=args.shutdown_timeout,
                       max_job_timeout=args.max_job_timeout, max_job_bytes=args.max_job_size,
                       min_free_space=args.min_free_space, allow_paths=args.allow_path, once=args.once,
                       allow_backing_files=_allow_backing(args),
                       metrics_enabled=args.metrics_enabled or bool(args.textfile_dir),
                       **transport_settings(args))
    from .paths import allows_everything
    if allows_everything(args.allow_path):
        log.warning("--allow-path /: jobs may read and write any path the worker can; give the image "
                    "and output directories instead")
    elif not args.allow_path:
        log.info("no --allow-path: jobs naming an image or output path are refused (PATH_NOT_ALLOWED)")
    from .preflight import prepare_dir, writable_dir
    try:
        if args.textfile_dir:  # before any job runs: a run whose metrics cannot be written is not started
            writable_dir("--textfile-dir", args.textfile_dir)
        dirs = [("--work-dir", cfg.work_dir)]
        if cfg.transport == "file":  # the Redis transport keeps jobs and results in Redis
            dirs = [("--jobs-dir", cfg.jobs_dir), ("--results-dir", cfg.results_dir)] + dirs
        for flag, path in dirs:
            prepare_dir(flag, path)
        worker = Worker(cfg, registry=REGISTRY)
    except ConfigError as exc:
        return _usage_error(str(exc))
    except ValueError as exc:
        return _usage_error(str(exc))
    serve = args.metrics_enabled and (not args.once or args.metrics_addr_given)
    signals.attach(worker)
    servers = []
    try:
        if serve:
            # bind now (a port in use stops us before anything is claimed), accept only once the
            # worker's own threads run, so connections can never take their place
            from .httpserver import start_server
            tokens = None
            if args.metrics_token_file:
                from .api.auth import TokenSet
                tokens = TokenSet.from_file(args.metrics_token_file, "--metrics-token-file")
            servers.append(start_server(args.metrics_addr, registry=REGISTRY, health=worker.health,
                                        tls_cert=args.metrics_tls_cert, tls_key=args.metrics_tls_key,
                                        max_connections=args.http_max_connections, start=False, tokens=tokens))
        servers += start_worker_api(args, worker, REGISTRY)
        worker.on_running = lambda: [server.start() for server in servers]
        worker.open()
    except (ConfigError, OSError) as exc:
        for server in servers:
            server.shutdown()
        if isinstance(exc, ConfigError):
            return _usage_error(str(exc))
        return _usage_error(f"cannot set up the job directories: {exc}")
    try:
        status = worker.run()
    finally:
        for server in servers:
            server.shutdown()
    signals.after_run()  # a second signal ends here with 130
    if args.once and args.textfile_dir:
        from .metrics import write_textfile
        try:
            write_textfile(args.textfile_dir, worker.metrics, succeeded=status == EXIT_OK)
        except OSError as exc:
            log.error("cannot write the textfile in %s: %s; exiting %d", args.textfile_dir, exc, EXIT_TEXTFILE)
            status = EXIT_TEXTFILE
    if not args.once:
        status = EXIT_OK
    logging.shutdown()
    if getattr(worker, "stuck_threads", 0):
        os._exit(status)  # do not wait for handler threads that ignore cancellation
    return status


def entry_point():
    sys.exit(main())
