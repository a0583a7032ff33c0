"""The command-line side of the REST API: the ``--api-*`` options of ``run`` and ``api`` read
(their table is :data:`.options.API_OPTIONS`), the transport the API fronts, and
``guestkit-worker api`` (the API alone, no job threads)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any, Callable

from ..job.errors import ConfigError
from .exitcodes import EXIT_OK
from .options import allow_backing, transport_settings

log = logging.getLogger(__name__)


def api_options(args: argparse.Namespace):
    """ApiOptions from resolved arguments, or None when --api-addr is not given."""
    if not args.api_addr:
        return None
    from ..api.service import ApiOptions
    return ApiOptions(addr=args.api_addr, token_file=args.api_token_file, tls_cert=args.api_tls_cert,
                      tls_key=args.api_tls_key, client_ca=args.api_client_ca,
                      max_connections=args.api_max_connections, max_waits=args.api_max_waits)


def check_api_options(args: argparse.Namespace) -> None:
    """The refusals that must come before anything starts (exit 2)."""
    options = api_options(args)
    if options is None:
        return
    from ..api.service import check_exposure
    check_exposure(options, args.allow_path)
    if bool(options.tls_cert) != bool(options.tls_key):
        raise ConfigError("--api-tls-cert and --api-tls-key go together")
    if options.client_ca and not options.tls_cert:
        raise ConfigError("--api-client-ca needs --api-tls-cert and --api-tls-key")


def open_api_transport(args: argparse.Namespace, worker_id: str):
    """The transport ``guestkit-worker api`` fronts, as ``worker_id``, opened: the files on
    --jobs-dir/--results-dir (it holds a liveness lock, so that cancelling a waiting job can
    claim it), or the Redis stream of --pool with --transport redis."""
    from ..runtime.config import WorkerConfig
    from ..transports import open_transport
    cfg = WorkerConfig(jobs_dir=args.jobs_dir, results_dir=args.results_dir, worker_id=worker_id,
                       pool=args.pool, max_job_bytes=args.max_job_size, **transport_settings(args))
    transport = open_transport(cfg)
    transport.open()
    return transport


def admission_registry(args: argparse.Namespace, transport: Any):
    """The handler registry the API admits jobs with: the worker's path policy."""
    from ..handlers import default_registry
    registry = default_registry()
    registry.configure_paths(args.allow_path, transport.protected_paths, allow_backing=allow_backing(args))
    return registry


def serve_api(args: argparse.Namespace, *, transport: Any, worker_id: str,
              health: Callable[[], tuple[bool, dict]], max_concurrent: int | None, metrics_registry: Any,
              registry: Any = None, start: bool = True):
    """Start the API described by args over ``transport``, admitting jobs with ``registry``
    (default: the handlers with --allow-path); returns the server handle."""
    from ..api.service import start_api
    if registry is None:
        registry = admission_registry(args, transport)
    return start_api(api_options(args), transport=transport, registry=registry,
                     allow_paths=args.allow_path, health=health, worker_id=worker_id, pool=args.pool,
                     max_concurrent=max_concurrent, max_job_size=args.max_job_size,
                     metrics_registry=metrics_registry, start=start)


def start_worker_api(args: argparse.Namespace, worker: Any, metrics_registry: Any) -> list:
    """``run --api-addr``: the API beside the worker's jobs, over the worker's own transport and
    handler registry (its path policy); [] without --api-addr, else [server], bound but
    accepting only after ``start()`` (once the worker has opened its transport and its threads
    run).  ConfigError when it cannot start."""
    if not args.api_addr:
        return []
    cfg = worker.cfg
    return [serve_api(args, transport=worker.transport, registry=worker.handlers, worker_id=cfg.worker_id,
                      health=worker.health, max_concurrent=cfg.max_concurrent,
                      metrics_registry=metrics_registry, start=False)]


def transport_health(transport: Any, worker_id: str, pool: str) -> Callable[[], tuple[bool, dict]]:
    """/health of ``guestkit-worker api``: the transport's checks."""
    from .. import __version__

    def health() -> tuple[bool, dict]:
        checks = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in transport.health().items()}
        healthy = all(c["ok"] for c in checks.values())
        return healthy, {"status": "healthy" if healthy else "unhealthy", "worker_id": worker_id,
                         "pool": pool, "version": __version__, "role": "api", "checks": checks}

    return health


def cmd_api(args: argparse.Namespace, usage_error: Callable[[str], int]) -> int:
    """``guestkit-worker api``: serve the API (and /metrics) until SIGTERM or SIGINT."""
    from prometheus_client import REGISTRY, disable_created_metrics

    from ..runtime.config import default_worker_id
    disable_created_metrics()
    if not args.api_addr:
        return usage_error("api needs --api-addr HOST:PORT")
    worker_id = args.worker_id or f"{default_worker_id()}-api"
    stop = threading.Event()
    servers, transport = [], None
    try:
        check_api_options(args)
        transport = open_api_transport(args, worker_id)
        health = transport_health(transport, worker_id, args.pool)
        if args.metrics_enabled:
            from prometheus_client import Gauge

            from .. import __version__
            from ..http.auth import TokenSet
            from ..http.metrics_port import start_server
            # the gateway's identity, as a worker's: dashboards select API servers by worker_id
            Gauge("guestkit_worker_info", "Worker identity; always 1.", ["worker_id", "pool", "version"],
                  registry=REGISTRY).labels(worker_id, args.pool, __version__).set(1)
            tokens = (TokenSet.from_file(args.metrics_token_file, "--metrics-token-file")
                      if args.metrics_token_file else None)
            servers.append(start_server(args.metrics_addr, registry=REGISTRY, health=health,
                                        tls_cert=args.metrics_tls_cert, tls_key=args.metrics_tls_key,
                                        max_connections=args.http_max_connections, tokens=tokens))
        servers.append(serve_api(args, transport=transport, worker_id=worker_id, health=health,
                                 max_concurrent=None, metrics_registry=REGISTRY))
    except (ConfigError, OSError) as exc:
        for server in servers:
            server.shutdown()
        if transport is not None:
            transport.close()
        return usage_error(str(exc) if isinstance(exc, ConfigError) else f"cannot open the job store: {exc}")
    hup = threading.Event()   # SIGHUP: read the token files and certificates again
    wake = threading.Event()  # any of the signals: act at once (no faster polling when idle)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: (stop.set(), wake.set()))
        signal.signal(signal.SIGHUP, lambda *_: (hup.set(), wake.set()))
    log.info("API only (no job threads) over %s", transport.describe())
    from .signals import reload_servers
    while not stop.is_set():
        wake.wait(1.0)
        wake.clear()
        if hup.is_set() and not stop.is_set():
            hup.clear()
            log.info("SIGHUP received: reading token files and TLS certificates again",
                     extra={"event": "signal_hup_reload"})
            reload_servers(servers)
    for server in servers:
        server.shutdown()
    transport.close()
    return EXIT_OK


__all__ = ["api_options", "check_api_options", "open_api_transport", "serve_api", "cmd_api"]
