"""Putting the REST API together: options, the exposure check, and start_api."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from .. import __version__
from ..http.auth import TokenSet
from ..http.listen import parse_addr
from ..job.errors import ConfigError
from ..settings.defaults import DEFAULT_API_MAX_CONNECTIONS, DEFAULT_API_MAX_WAITS
from ..transports.base import Transport
from .app import ApiApp, capabilities_document
from .dead import DeadApi
from .jobs import JobsApi
from .metrics import ApiMetrics
from .precheck import check_submission
from .server import is_loopback, start_api_server, tls_context

log = logging.getLogger(__name__)


@dataclass
class ApiOptions:
    """The ``--api-*`` options."""

    addr: str
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    max_connections: int = DEFAULT_API_MAX_CONNECTIONS
    max_waits: int = DEFAULT_API_MAX_WAITS
    request_deadline: float | None = None  #: seconds for a whole request (None: the server's 30)


def check_exposure(options: ApiOptions, allow_paths: Sequence[str] | None) -> tuple[str, int]:
    """The address to bind; ConfigError when a non-loopback address lacks tokens or a path policy."""
    host, port = parse_addr(options.addr, "--api-addr")
    if not is_loopback(host):
        if not options.token_file:
            raise ConfigError(f"--api-addr {options.addr} is reachable from other hosts: give "
                              "--api-token-file too (or listen on 127.0.0.1)")
        if not allow_paths:
            raise ConfigError(f"--api-addr {options.addr} is reachable from other hosts and jobs name "
                              "host paths: give --allow-path too (or listen on 127.0.0.1)")
        if not options.tls_cert:
            log.warning("--api-addr %s is reachable from other hosts without TLS: tokens and jobs travel "
                        "in clear text (give --api-tls-cert and --api-tls-key)", options.addr)
    return host, port


def _warn_if_readable_by_others(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("--api-token-file %s can be read by its group or others (mode %04o): chmod 0400 it",
                    path, mode & 0o7777)


def start_api(options: ApiOptions, *, transport: Transport, registry: Any,
              allow_paths: Sequence[str] | None, health: Callable[[], tuple[bool, dict]],
              worker_id: str, pool: str, max_concurrent: int | None, max_job_size: int,
              metrics_registry: Any = None, start: bool = True):
    """Check the options, load the tokens and serve the API; returns the server handle
    (``url``, ``port``, ``start()``, ``shutdown()``).  ``registry`` is the handler registry,
    already configured with the path policy; ``start=False`` binds without accepting until
    ``start()``.  Raises ConfigError (exit 2) on any refusal."""
    addr = check_exposure(options, allow_paths)
    tokens = None
    if options.token_file:
        tokens = TokenSet.from_file(options.token_file)
        _warn_if_readable_by_others(options.token_file)
    metrics = ApiMetrics(metrics_registry)
    jobs = JobsApi(transport, lambda raw: check_submission(raw, registry, max_job_size),
                   max_waits=options.max_waits, on_wait=metrics.waiting.inc)
    app = ApiApp(jobs, capabilities=capabilities_document(
                     worker_id=worker_id, pool=pool, version=__version__, registry=registry,
                     max_concurrent=max_concurrent, max_job_size=max_job_size),
                 health=health, tokens=tokens, max_body=max_job_size, metrics=metrics,
                 dead=DeadApi(transport, max_job_bytes=max_job_size, on_requeued=metrics.requeued.inc,
                              on_purged=metrics.purged.inc))
    service = start_api_server(addr, app, tls_cert=options.tls_cert, tls_key=options.tls_key,
                               client_ca=options.client_ca, max_connections=options.max_connections,
                               request_deadline=options.request_deadline, on_refused=metrics.rejected.inc,
                               start=start)
    if tokens is not None:
        service.reloadable.append(("--api-token-file", tokens.reload))
    if options.tls_cert:
        def renew() -> str:
            service.use_tls(tls_context(options.tls_cert, options.tls_key, options.client_ca))
            ca = f", client CA {options.client_ca}" if options.client_ca else ""
            return f"certificate {options.tls_cert}{ca}"
        service.reloadable.append(("--api-tls-cert", renew))
    return service


__all__ = ["ApiOptions", "check_exposure", "start_api"]
