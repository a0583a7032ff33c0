"""``guestkit-worker workers``: the workers of the local jobs directory or of a Redis pool, live
and gone, with their pool, their running jobs and their last sign of life; read from the
transport's own records (lock files and processing dirs, or liveness keys, the consumer group
and the running hash), so it needs no worker to answer."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..job.errors import ConfigError
from .exitcodes import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from .options import add_queue_options, queue_config


def add_workers_command(sub: Any) -> None:
    """The ``workers`` sub-command."""
    p = sub.add_parser("workers", help="list the workers of the jobs dir or Redis pool, live and gone",
                       description="Print one line per worker: worker id, pool, alive or gone, last sign "
                                   "of life (files: its lock file's mtime, refreshed every 30 s; Redis: "
                                   "its liveness key's last refresh), and the ids of the jobs it runs. "
                                   "A gone worker's jobs wait to be taken over by a live one.")
    p.add_argument("--json", action="store_true", help="print the workers as JSON")
    add_queue_options(p)


def cmd_workers(args: argparse.Namespace) -> int:
    """Print the workers (exit 0), or one line why they cannot be read (2 usage, 6 unavailable)."""
    from ..runtime.config import default_worker_id
    from ..transports import open_transport
    from ..transports.base import TransportUnavailable
    from .preflight import existing_dir
    transport = None
    try:
        cfg = queue_config(args, f"{default_worker_id()}-cli")
        if cfg.transport == "file":  # a typo must not create a directory no worker reads
            existing_dir("--jobs-dir", cfg.jobs_dir)
        transport = open_transport(cfg)
        found = transport.workers()
    except ConfigError as exc:
        print(f"guestkit-worker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (TransportUnavailable, OSError) as exc:
        print(f"guestkit-worker: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        if transport is not None:
            transport.close()
    if args.json:
        print(json.dumps([w.to_dict() for w in found], indent=2))
        return EXIT_OK
    for w in found:
        fields = (w.worker_id, w.pool or "-", "alive" if w.alive else "gone", w.last_seen or "-",
                  ",".join(w.running) or "-")
        print("\t".join(fields))
    return EXIT_OK


__all__ = ["add_workers_command", "cmd_workers"]
