"""Job transports: the interface in :mod:`.base`; the file transport in :mod:`.files`; the
Redis Streams transport in :mod:`.redis` (needs the ``redis`` extra).

:func:`open_transport` is the one place a transport is chosen from the configuration: a new
transport adds its name here (and its flags to the CLI)."""

from __future__ import annotations

from typing import Any

from .base import Transport

#: transport names the configuration may choose
TRANSPORTS = ("files",)


def open_transport(config: Any) -> Transport:
    """Build (not yet open) the transport config.transport names (default ``files``)."""
    name = getattr(config, "transport", None) or "files"
    if name == "files":
        from .files import FileTransport
        return FileTransport(config.jobs_dir, config.results_dir, config.worker_id,
                             max_job_bytes=config.max_job_bytes, durable=config.durable, once=config.once,
                             poll_interval=config.poll_interval)
    from ..errors import ConfigError
    raise ConfigError(f"unknown transport {name!r} (known: {', '.join(TRANSPORTS)})")
