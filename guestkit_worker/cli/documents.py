"""Commands about job documents that run no worker: ``list-operations``, ``validate`` and
``submit`` of one file (:func:`.jobs.cmd_submit_jobs` loops over the files and --wait)."""

import os
import sys

from .exitcodes import EXIT_JOBS_FAILED, EXIT_OK, EXIT_OUTCOME_UNKNOWN, EXIT_USAGE
from .options import allow_backing, allowed_paths, queue_config, usage_error


def cmd_list_operations():
    from ..handlers import default_registry
    reg = default_registry()
    for op in reg.operations:
        handler = reg.get(op)
        try:
            ok, detail = handler.engine_status()
        except Exception as exc:
            ok, detail = False, str(exc)
        print(f"{op:<20} {'available' if ok else 'UNAVAILABLE':<12} {detail}")
    return EXIT_OK


def _check_file(path, registry, max_bytes=None):
    """(problems, job, raw) of one job file: its problems (empty when valid), the parsed job
    and the bytes read, judged by the worker's own admission (guestkit_worker.job.admission) with
    a size limit of max_bytes (default: the worker's default --max-job-size)."""
    from ..job.admission import problems
    from ..settings.defaults import DEFAULT_MAX_JOB_BYTES
    max_bytes = max_bytes or DEFAULT_MAX_JOB_BYTES
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(max_bytes + 1)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(max_bytes + 1)
    except OSError as exc:
        return [f"cannot read: {exc.strerror}"], None, None
    return (*problems(raw, registry, max_bytes), raw)


def cmd_validate(args):
    from ..handlers import default_registry
    reg = default_registry()
    reg.configure_paths(allowed_paths(args), allow_backing=allow_backing(args))
    bad = 0
    for path in args.files:
        problems, job, _ = _check_file(path, reg)
        if problems:
            bad += 1
            for problem in problems:
                print(f"{path}: {problem}")
        else:
            print(f"{path}: ok ({job.job_id}, {job.operation})")
    return EXIT_JOBS_FAILED if bad else EXIT_OK


def cmd_submit(args):
    from ..handlers import default_registry
    from ..job.errors import ConfigError
    from .preflight import existing_dir
    cfg = queue_config(args, f"submit-{os.getpid()}")
    try:  # a typo must not create a directory no worker reads
        if cfg.transport == "file":
            existing_dir("--jobs-dir", cfg.jobs_dir)
    except ConfigError as exc:
        return usage_error(str(exc))
    reg = default_registry()
    reg.configure_paths(allowed_paths(args), allow_backing=allow_backing(args))
    problems, job, raw = _check_file(args.job, reg, cfg.max_job_bytes)  # the size workers read
    if problems:
        for problem in problems:
            print(f"{args.job}: {problem}", file=sys.stderr)
        return EXIT_JOBS_FAILED
    from ..transports import open_transport
    from ..transports.base import JobTooLarge, OutcomeUnknown
    try:
        receipt = open_transport(cfg).submit(job.doc, raw)  # queued as read: never a larger form
    except OutcomeUnknown as exc:
        print(f"{args.job}: job {job.job_id} may or may not be queued: {exc}; submit the same file "
              "again: it is never queued twice", file=sys.stderr)
        return EXIT_OUTCOME_UNKNOWN
    except ConfigError as exc:
        return usage_error(str(exc))
    except JobTooLarge as exc:
        print(f"{args.job}: {exc}", file=sys.stderr)
        return EXIT_JOBS_FAILED
    except OSError as exc:
        print(f"{args.job}: cannot queue it: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if receipt.outcome == "conflict":
        print(f"{args.job}: job id {job.job_id} is already used by another job ({receipt.status}: "
              f"{receipt.location}); give this document another job_id", file=sys.stderr)
        return EXIT_JOBS_FAILED
    # one line per job, JOB_ID STATUS, on every transport and over --api; the very same document
    # submitted again is no error (as over the API, which answers 200): nothing new is queued
    print(f"{job.job_id} {receipt.status}{' (already submitted)' if receipt.outcome == 'exists' else ''}")
    return EXIT_OK
