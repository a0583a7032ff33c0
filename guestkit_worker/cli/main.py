"""Command line: ``guestkit-worker [COMMAND] [OPTIONS]`` (run is the default command).

:func:`get_parser` only builds the parser (argparse-manpage imports it); reading the
environment, logging set-up and everything else happens in :func:`main`, which hands each
command to its module: :mod:`.run`, :mod:`.api`, :mod:`.documents` (validate, submit,
list-operations), :mod:`.jobs` (the queue clients), :mod:`.dead` (dead letters), :mod:`.prune`,
:mod:`.vulndb` and :mod:`.workers`.  The options themselves
are in :mod:`.options`, the exit statuses in :mod:`.exitcodes`.
"""

import argparse
import os
import sys

from .. import __version__
from .options import (
    API_COMMAND_OPTIONS,
    add_allow_backing,
    add_allow_path,
    add_api_client_options,
    add_queue_options,
    add_run_options,
    allowed_paths,
    env_name,
    resolve,
    setup_logging,
    usage_error,
)

COMMANDS = ("run", "api", "submit", "validate", "list-operations", "status", "result", "list", "cancel",
            "dead", "prune", "vulndb", "workers")


def get_parser():
    """Build the argument parser; no side effects (argparse-manpage imports this)."""
    parser = argparse.ArgumentParser(
        prog="guestkit-worker",
        description="Run guestkit job protocol v1.0 jobs (VM disk inspection and conversion) from a jobs "
                    "directory or a Redis Streams pool (--transport redis), with Prometheus metrics, a "
                    "health endpoint, a REST API (--api-addr) and cron-friendly one-shot runs (--once). "
                    "Without a COMMAND the worker runs (run): as a daemon, or with --once it runs the "
                    "jobs waiting now and exits.  run --help lists every option of the worker, "
                    "COMMAND --help those of a command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .jobs import DEFAULT_WAIT, add_client_commands
    run = sub.add_parser("run", help="run the worker (the default command)",
                         description="Run the worker: claim job files, run their handlers, write results.")
    add_run_options(run)
    run.add_argument("--list-operations", action="store_true",
                     help="print each operation and whether its engine is installed, then exit")
    api = sub.add_parser("api",
                         help="serve the REST API alone (no job threads) over the jobs and results dirs",
                         description="Serve the REST API (--api-addr) in front of the jobs and results "
                                     "directories, without running jobs: a gateway for the workers that "
                                     "share them.")
    add_run_options(api, only=API_COMMAND_OPTIONS)
    add_allow_backing(api)
    api.set_defaults(once=False)
    submit = sub.add_parser("submit", help="validate job files and queue them (jobs dir, or --api URL)",
                            description="Validate each JOB and place it in the jobs directory as JOB_ID.json "
                                        "(written beside, then renamed), so the worker never reads it "
                                        "half-way; with --api, POST it to a worker's REST API instead. "
                                        "Prints JOB_ID STATUS per job; the same document submitted again "
                                        "is no error, another one with a used job id is.")
    submit.add_argument("jobs", nargs="+", metavar="JOB.json",
                        help="job documents to submit ('-' reads standard input)")
    submit.add_argument("--wait", type=float, nargs="?", const=DEFAULT_WAIT, default=0, metavar="SECONDS",
                        help=f"then wait up to SECONDS (default {DEFAULT_WAIT:g}) for every job to finish; "
                             "exit 0 only if all completed")
    add_allow_path(submit)
    add_queue_options(submit)
    validate = sub.add_parser("validate", help="check job files and print every problem",
                              description="Check each FILE against the job protocol and the operations this "
                                          "worker serves; print one line per file; exit 1 if any is invalid.")
    validate.add_argument("files", nargs="+", metavar="FILE", help="job documents")
    add_allow_path(validate)
    sub.add_parser("list-operations", help="print each operation and whether its engine is installed",
                   description="Print each operation this worker serves and whether its engine is installed.")
    add_api_client_options(submit)
    add_client_commands(sub)
    from .dead import add_dead_command
    add_dead_command(sub)
    from .prune import add_prune_command
    add_prune_command(sub)
    from .vulndb import add_vulndb_command
    add_vulndb_command(sub)
    from .workers import add_workers_command
    add_workers_command(sub)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_parser()
    commands = _commands(parser)
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        return usage_error(f"unknown command {argv[0]!r} (commands: {', '.join(commands)}; "
                            "run 'guestkit-worker COMMAND --help' for one)")
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    if args.command == "submit":
        from .documents import cmd_submit
        from .jobs import cmd_submit_jobs
        return cmd_submit_jobs(args, cmd_submit, allowed_paths(args))
    if args.command in ("status", "result", "list", "cancel"):
        from .jobs import cmd_client
        return cmd_client(args)
    if args.command == "dead":
        from .dead import cmd_dead
        return cmd_dead(args)
    if args.command == "validate":
        from .documents import cmd_validate
        return cmd_validate(args)
    if args.command == "prune":
        from .prune import cmd_prune
        return cmd_prune(args)
    if args.command == "vulndb":
        from .vulndb import cmd_vulndb
        return cmd_vulndb(args)
    if args.command == "workers":
        from .workers import cmd_workers
        return cmd_workers(args)
    if args.command == "list-operations" or getattr(args, "list_operations", False):
        from .documents import cmd_list_operations
        return cmd_list_operations()
    args = resolve(args)
    if args.command == "api":
        setup_logging(args)
        from .api import cmd_api
        return cmd_api(args, usage_error)
    args.metrics_addr_given = any(a == "--metrics-addr" or a.startswith("--metrics-addr=") for a in argv) \
        or bool(os.environ.get(env_name("metrics_addr")))
    from .run import cmd_run
    return cmd_run(args)


def _commands(parser):
    """The command names the parser has (a command added to get_parser is listed by itself)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return list(COMMANDS)


def entry_point():
    sys.exit(main())
