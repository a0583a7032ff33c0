"""``guestkit-worker run``: the worker daemon (or a one-shot run), its /metrics and /health
server, the REST API beside it, and the one-shot textfile."""

import logging
import os

from .exitcodes import EXIT_JOBS_FAILED, EXIT_OK, EXIT_TEXTFILE, EXIT_WORKER_ID_TAKEN
from .options import allow_backing, setup_logging, transport_settings, usage_error

log = logging.getLogger(__name__)


def cmd_run(args):
    from ..runtime.config import default_worker_id
    args.worker_id = args.worker_id or default_worker_id()  # known to every log record
    setup_logging(args)
    # handlers first: a SIGTERM during start-up (loading handlers, recovery, binding) is a clean,
    # logged stop instead of the default action's silent death
    from .signals import SignalWatcher
    signals = SignalWatcher(None, shutdown_timeout=args.shutdown_timeout).install()
    from prometheus_client import REGISTRY, disable_created_metrics

    from ..job.errors import ConfigError
    from ..transports.base import StopRequested
    disable_created_metrics()
    try:
        _check_flags(args)
        worker = _build_worker(args, REGISTRY)
    except (ConfigError, ValueError) as exc:
        return usage_error(str(exc))
    signals.attach(worker)
    servers = []
    try:
        servers = _start_servers(args, worker, REGISTRY, signals)
        worker.open()
    except StopRequested as exc:  # SIGTERM while waiting for Redis: a clean stop, nothing was taken
        _shut(servers)
        signals.after_run()  # a second signal ends here with 130
        log.info("%s; stopped before taking any job; exit status %d", exc, EXIT_OK,
                 extra={"event": "stopped_at_start"})
        logging.shutdown()
        return EXIT_OK
    except (ConfigError, OSError) as exc:
        _shut(servers)
        if isinstance(exc, ConfigError):
            return usage_error(str(exc))
        return usage_error(f"cannot set up the job directories: {exc}")
    try:
        status = EXIT_OK if worker.run() == 0 else EXIT_JOBS_FAILED  # 0: every job completed
    finally:
        _shut(servers)
    signals.after_run()  # a second signal ends here with 130
    status = _final_status(args, worker, status)
    logging.shutdown()
    if getattr(worker, "stuck_threads", 0):
        os._exit(status)  # do not wait for handler threads that ignore cancellation
    return status


def _check_flags(args) -> None:
    """The flags that only make sense together (ConfigError naming them otherwise)."""
    from ..job.errors import ConfigError
    if args.textfile_dir and not args.once:
        raise ConfigError("--textfile-dir needs --once (a daemon is scraped on /metrics instead)")
    if bool(args.metrics_tls_cert) != bool(args.metrics_tls_key):
        raise ConfigError("--metrics-tls-cert and --metrics-tls-key go together")
    from .api import check_api_options
    check_api_options(args)


def _worker_config(args):
    from ..runtime.config import WorkerConfig
    return WorkerConfig(jobs_dir=args.jobs_dir, results_dir=args.results_dir, work_dir=args.work_dir,
                        worker_id=args.worker_id, pool=args.pool, max_concurrent=args.max_concurrent,
                        poll_interval=args.poll_interval, shutdown_timeout=args.shutdown_timeout,
                        max_job_timeout=args.max_job_timeout, max_job_bytes=args.max_job_size,
                        min_free_space=args.min_free_space, allow_paths=args.allow_path, once=args.once,
                        allow_backing_files=allow_backing(args),
                        metrics_enabled=args.metrics_enabled or bool(args.textfile_dir),
                        vuln_db=args.vuln_db, vuln_db_max_age=args.vuln_db_max_age,
                        **transport_settings(args))


def _log_path_policy(allow_path) -> None:
    from ..system.paths import allows_everything
    if allows_everything(allow_path):
        log.warning("--allow-path /: jobs may read and write any path the worker can; give the image "
                    "and output directories instead")
    elif not allow_path:
        log.info("no --allow-path: jobs naming an image or output path are refused (PATH_NOT_ALLOWED)")


def _build_worker(args, registry):
    """The worker, once its directories are usable (ConfigError naming the flag otherwise)."""
    from ..runtime.worker import Worker
    from .preflight import prepare_dir, writable_dir
    cfg = _worker_config(args)
    _log_path_policy(args.allow_path)
    if args.textfile_dir:  # before any job runs: a run whose metrics cannot be written is not started
        writable_dir("--textfile-dir", args.textfile_dir)
    dirs = [("--work-dir", cfg.work_dir)]
    if cfg.transport == "file":  # the Redis transport keeps jobs and results in Redis
        dirs = [("--jobs-dir", cfg.jobs_dir), ("--results-dir", cfg.results_dir)] + dirs
    for flag, path in dirs:
        prepare_dir(flag, path)
    return Worker(cfg, registry=registry)


def _start_servers(args, worker, registry, signals) -> list:
    """Bind the metrics port and the API now (a port in use stops the worker before anything is
    claimed); they accept only once the worker's own threads run, so connections can never take
    their place."""
    from .api import start_worker_api
    servers = []
    try:
        if args.metrics_enabled and (not args.once or args.metrics_addr_given):
            servers.append(_metrics_server(args, worker, registry))
        servers += start_worker_api(args, worker, registry)
    except BaseException:
        _shut(servers)
        raise
    if any(server.reloadable for server in servers):
        from .signals import reload_servers
        signals.on_hup = lambda: reload_servers(servers)
    worker.on_running = lambda: [server.start() for server in servers]
    return servers


def _metrics_server(args, worker, registry):
    from ..http.metrics_port import start_server
    tokens = None
    if args.metrics_token_file:
        from ..http.auth import TokenSet
        tokens = TokenSet.from_file(args.metrics_token_file, "--metrics-token-file")
    return start_server(args.metrics_addr, registry=registry, health=worker.health,
                        tls_cert=args.metrics_tls_cert, tls_key=args.metrics_tls_key,
                        max_connections=args.http_max_connections, start=False, tokens=tokens)


def _shut(servers) -> None:
    for server in servers:
        server.shutdown()


def _final_status(args, worker, status: int) -> int:
    """The exit status once the worker ran: the one-shot textfile's, a daemon's clean stop, or
    the worker's own reason to stop."""
    if args.once and args.textfile_dir:
        from ..metrics.families import write_textfile
        try:
            write_textfile(args.textfile_dir, worker.metrics, succeeded=status == EXIT_OK)
        except OSError as exc:
            log.error("cannot write the textfile in %s: %s; exiting %d", args.textfile_dir, exc,
                      EXIT_TEXTFILE)
            status = EXIT_TEXTFILE
    if not args.once:
        status = EXIT_OK
    if worker.fatal_cause == "worker_id_taken":  # another live process holds its --worker-id
        status = EXIT_WORKER_ID_TAKEN
        log.error("exit status %d: another live process took this worker's --worker-id", status)
    return status
