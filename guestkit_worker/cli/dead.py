"""``guestkit-worker dead list | show ENTRY | requeue ENTRY... | requeue --all | purge
ENTRY... | purge --all``: the dead letters of the queue (Redis: the pool's ``dead`` stream;
files: job files rejected without ever becoming a job, in jobs/failed/).

With ``--api URL`` each action is a request to a worker's REST API (through
:mod:`guestkit_worker.client`); without it the same endpoint code
(:class:`guestkit_worker.api.dead.DeadApi`) runs in this process on the local transport, so
both ways answer and exit alike (:mod:`.exitcodes`, ``DEAD_STATUSES``).  With several entries
every one is tried and the highest status wins.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .exitcodes import EXIT_DEAD_REFUSED, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from .jobs import LocalJobs, run_with_backend
from .options import add_api_client_options, add_queue_options, queue_config
from .pages import add_page_options, print_json, print_rows

#: pages of this many entries are read for --all
_ALL_PAGE = 500


def add_dead_command(sub: Any) -> None:
    """The ``dead`` command and its four actions, each with the flags of ``list``."""
    dead = sub.add_parser("dead", help="list, show, requeue or purge dead letters",
                          description="Dead letters: queue entries moved aside for good (Redis: the pool's "
                                      "dead stream; files: job files rejected before they became a job, "
                                      "in jobs/failed/).  requeue queues the original document again as a "
                                      "new delivery; one that still cannot run is refused with its reason.")
    actions = dead.add_subparsers(dest="dead_action", metavar="ACTION", required=True)
    p = actions.add_parser("list", help="one line per dead letter, newest first",
                           description="Print one line per dead letter: entry, reason, job id, time, detail.")
    add_page_options(p, "entries")
    p = actions.add_parser("show", help="print one dead letter with its document, as JSON",
                           description="Print a dead letter as JSON: entry, reason, detail, job_id, "
                                       "dead_at, size and the document as text.")
    p.add_argument("entry", metavar="ENTRY")
    for name, what in (("requeue", "queue each ENTRY's original document again as a new delivery"),
                       ("purge", "delete each ENTRY for good")):
        p = actions.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        p.add_argument("entries", nargs="*", metavar="ENTRY")
        p.add_argument("--all", action="store_true", help="every dead letter there is now")
    for p in actions.choices.values():
        add_api_client_options(p)
        add_queue_options(p.add_argument_group("without --api"))


class ApiDead:
    """The producer library's Client (:mod:`guestkit_worker.client`) as the dead command's
    backend over --api: answers ``(HTTP status, body)`` like :class:`LocalDead`."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _call(self, call: Any) -> tuple:
        from ..client import ApiError
        try:
            return 200, {"success": True, "data": call()}
        except ApiError as err:
            return err.status, err.body

    def dead_list(self, **query: Any) -> tuple:
        return self._call(lambda: self.client.dead_list(**query))

    def dead_show(self, entry: str) -> tuple:
        return self._call(lambda: self.client.dead_show(entry))

    def dead_requeue(self, entry: str) -> tuple:
        return self._call(lambda: self.client.dead_requeue(entry))

    def dead_purge(self, entry: str) -> tuple:
        return self._call(lambda: self.client.dead_purge(entry))


class LocalDead(LocalJobs):
    """The API's dead-letter endpoint code (``jobs``: a DeadApi) run in this process."""

    def dead_list(self, **query: Any) -> tuple:
        return self._call(self.jobs.list, {k: str(v) for k, v in query.items() if v is not None})

    def dead_show(self, entry: str) -> tuple:
        return self._call(self.jobs.show, entry)

    def dead_requeue(self, entry: str) -> tuple:
        return self._call(self.jobs.requeue, entry)

    def dead_purge(self, entry: str) -> tuple:
        return self._call(self.jobs.purge, entry)


def local_dead(args: argparse.Namespace) -> LocalDead:
    """The local transport (--transport, --jobs-dir, --redis-url, ...) behind DeadApi; a
    requeued document must fit --max-job-size."""
    from ..api.dead import DeadApi
    from ..runtime.config import default_worker_id
    from ..transports import open_transport
    from .preflight import existing_dir
    cfg = queue_config(args, f"{default_worker_id()}-cli")
    if cfg.transport == "file":  # a typo must not create a directory no worker reads
        existing_dir("--jobs-dir", cfg.jobs_dir)
    return LocalDead(DeadApi(open_transport(cfg), max_job_bytes=cfg.max_job_bytes))


def _failed(reply: tuple, what: str) -> int:
    """Print an error answer in one line; its exit status."""
    status, body = reply
    body = body if isinstance(body, dict) else {}
    print(f"guestkit-worker: dead {what}: {body.get('error', 'ERROR')}: {body.get('message', '')}",
          file=sys.stderr)
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (409, 422):
        return EXIT_DEAD_REFUSED
    if status == 400:
        return EXIT_USAGE
    return EXIT_UNAVAILABLE


def _list(args: argparse.Namespace, backend: Any) -> int:
    reply = backend.dead_list(limit=args.limit, page_token=args.page_token)
    if reply[0] != 200:
        return _failed(reply, "list")
    page = reply[1]["data"]
    if args.json:
        print_json(page)
        return EXIT_OK
    print_rows(page, ((e["entry"], e["reason"], e.get("job_id") or "-", e["dead_at"],
                       " ".join(str(e.get("detail") or "-").split())) for e in page["entries"]))
    return EXIT_OK


def _every_entry(backend: Any) -> tuple[list, int]:
    """(every entry name there is now, EXIT_OK), or ([], the status of a failed listing)."""
    names, token = [], None
    while True:
        reply = backend.dead_list(limit=_ALL_PAGE, page_token=token)
        if reply[0] != 200:
            return [], _failed(reply, "list")
        names += [e["entry"] for e in reply[1]["data"]["entries"]]
        token = reply[1]["data"].get("next_page_token")
        if not token:
            return names, EXIT_OK


def _act(args: argparse.Namespace, backend: Any) -> int:
    """requeue or purge each entry (or --all); the highest status wins."""
    entries, worst = list(args.entries), EXIT_OK
    if args.all:
        entries, worst = _every_entry(backend)
    for entry in entries:
        call = backend.dead_requeue if args.dead_action == "requeue" else backend.dead_purge
        reply = call(entry)
        if reply[0] != 200:
            worst = max(worst, _failed(reply, f"{args.dead_action} {entry}"))
        elif args.dead_action == "requeue":
            print(f"{entry} requeued {reply[1]['data'].get('job_id') or '-'}")
        else:
            print(f"{entry} purged")
    if args.all and not entries and worst == EXIT_OK:
        print("no dead letters", file=sys.stderr)
    return worst


def _run(args: argparse.Namespace, backend: Any) -> int:
    if not hasattr(backend, "dead_list"):  # --api: the job commands' backend over the library's Client
        backend = ApiDead(backend.client)
    if args.dead_action == "list":
        return _list(args, backend)
    if args.dead_action == "show":
        reply = backend.dead_show(args.entry)
        if reply[0] != 200:
            return _failed(reply, f"show {args.entry}")
        print_json(reply[1]["data"])
        return EXIT_OK
    return _act(args, backend)


def _usage_problem(args: argparse.Namespace) -> str | None:
    from ..api.dead import check_entry
    if args.dead_action in ("requeue", "purge"):
        if args.all == bool(args.entries):
            return f"dead {args.dead_action}: give ENTRY... or --all (not both)"
        names = args.entries
    else:
        names = [args.entry] if args.dead_action == "show" else []
    if args.dead_action == "list" and not 1 <= args.limit <= 500:
        return f"--limit: must be from 1 to 500, got {args.limit}"
    for name in names:
        problem = check_entry(name)
        if problem is not None:
            return f"ENTRY {name[:60]!r}: {problem}"
    return None


def cmd_dead(args: argparse.Namespace) -> int:
    """The dead command: names no entry can have are refused before any request (exit 2)."""
    problem = _usage_problem(args)
    if problem is not None:
        print(f"guestkit-worker: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return run_with_backend(args, _run, local_dead)


__all__ = ["add_dead_command", "cmd_dead"]
