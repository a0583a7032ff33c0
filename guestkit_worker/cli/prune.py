"""Retention for the file layout: ``guestkit-worker prune --older-than DURATION [--dry-run]``.

Removes what is finished and older than DURATION (``0s``: everything finished so far):

* archived job files in ``jobs/done/`` and ``jobs/failed/`` (with their ``.reason.json``);
* ``results/JOB_ID-result.json`` and ``results/JOB_ID-progress.jsonl``;

and never:

* a job waiting in ``jobs/`` or claimed in ``jobs/.processing/`` (nor the result or progress
  file of such a job: a job sent back to the queue keeps its earlier attempt's result);
* a result that an idempotency record in ``results/.idempotency/`` points to (removing it would
  let the key run its job again); the records themselves are kept;
* anything that is not a regular file (links are never followed), and hidden temp files
  (``tempfiles`` sweeps those).

A file's age is taken from the later of its modification and status-change times: archiving is
a rename, which keeps the producer's mtime but sets the ctime, so a job that waited a month and
finished a minute ago is a minute old.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..transports.files.layout import Layout
# the file layout (and the transport package it belongs to) is imported when a prune runs, not
# when the command line only builds its parser (``add_prune_command``)

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RESULT_SUFFIXES = ("-result.json", "-progress.jsonl")
#: a waiting job file larger than this is not read for its job_id (its name still protects it)
_MAX_PEEK_BYTES = 1 << 20


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' or plain seconds -> seconds.  0 (``0s``, ``0d``) is
    allowed: everything finished so far (waiting and running jobs are kept whatever the age)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise ValueError(f"expected a duration such as 30d, 12h, 90m, 3600 (seconds) or 0s, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)
    kept_idempotent: int = 0   # old results an idempotency record points to
    kept_active: int = 0       # old results or progress files of waiting or running jobs
    errors: list[str] = field(default_factory=list)


def _age_stamp(st: os.stat_result) -> float:
    return max(st.st_mtime, st.st_ctime)


def _regular(path: str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _job_id_of(path: str) -> str | None:
    from ..transports.files.layout import read_json
    st = _regular(path)
    doc = read_json(path) if st is not None and st.st_size <= _MAX_PEEK_BYTES else None
    job_id = doc.get("job_id") if isinstance(doc, dict) else None
    return job_id if isinstance(job_id, str) else None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def active_job_ids(layout: Layout) -> set[str]:
    """Ids of the jobs waiting in jobs/ or claimed by a worker: by file name (JOB_ID.json, the
    name submit and the API use) and by the job_id inside the file."""
    from ..transports.files.layout import PROCESSING, RUNNING_SUFFIX
    paths = [os.path.join(layout.jobs_dir, n) for n in _listdir(layout.jobs_dir) if n.endswith(".json")]
    root = os.path.join(layout.jobs_dir, PROCESSING)
    for worker in _listdir(root):
        d = os.path.join(root, worker)
        if os.path.isdir(d) and not os.path.islink(d):
            paths += [os.path.join(d, n) for n in _listdir(d) if not n.startswith(".")]
    ids = set()
    for p in paths:
        name = os.path.basename(p)
        if name.endswith(RUNNING_SUFFIX):
            name = name[:-len(RUNNING_SUFFIX)]
        ids.add(name[:-len(".json")] if name.endswith(".json") else name)
        job_id = _job_id_of(p)
        if job_id:
            ids.add(job_id)
    return ids


def idempotent_job_ids(layout: Layout) -> set[str]:
    """Ids of the jobs whose results an idempotency record points to."""
    ids = set()
    for name in _listdir(layout.idem_dir):
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(layout.idem_dir, name), "rb") as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("job_id"), str):
            ids.add(rec["job_id"])
    return ids


def prune(jobs_dir: str, results_dir: str, older_than: float, *, dry_run: bool = False,
          now: float | None = None) -> PruneReport:
    """Remove (or with dry_run only list) what is finished and older than older_than seconds."""
    from ..transports.files.layout import Layout
    layout = Layout(jobs_dir, results_dir, worker_id="prune")
    cutoff = (time.time() if now is None else now) - older_than
    report = PruneReport()

    def remove(path: str) -> None:
        report.removed.append(path)
        if dry_run:
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            report.removed.pop()
            report.errors.append(f"{path}: {exc.strerror or exc}")

    for archive in (layout.done_dir, layout.failed_dir):
        names = _listdir(archive)
        present = set(names)
        for name in names:
            if name.startswith(".") or name.endswith(".reason.json"):
                continue
            path = os.path.join(archive, name)
            st = _regular(path)
            if st is None or _age_stamp(st) >= cutoff:
                continue
            remove(path)
            if name + ".reason.json" in present and _regular(path + ".reason.json"):
                remove(path + ".reason.json")
        for name in names:  # a reason whose job file is gone already
            if name.endswith(".reason.json") and name[:-len(".reason.json")] not in present:
                st = _regular(os.path.join(archive, name))
                if st is not None and _age_stamp(st) < cutoff:
                    remove(os.path.join(archive, name))

    # read these after the archives: a job returned to the queue meanwhile is seen as waiting
    active, idempotent = active_job_ids(layout), idempotent_job_ids(layout)
    for name in _listdir(layout.results_dir):
        suffix = next((s for s in _RESULT_SUFFIXES if name.endswith(s)), None)
        if name.startswith(".") or suffix is None:
            continue
        path = os.path.join(layout.results_dir, name)
        st = _regular(path)
        if st is None or _age_stamp(st) >= cutoff:
            continue
        job_id = name[:-len(suffix)]
        if job_id in active:
            report.kept_active += 1
        elif job_id in idempotent and suffix == "-result.json":
            report.kept_idempotent += 1
        else:
            remove(path)
    return report


# -- command line ------------------------------------------------------------------------------
def add_prune_command(sub) -> None:
    """``guestkit-worker prune`` on the subparsers of the CLI."""
    from .options import RUN_OPTIONS, add_options
    p = sub.add_parser("prune", help="remove finished jobs, results and progress files older than DURATION",
                       description="Remove archived job files (done/, failed/ with their reasons), results "
                                   "and progress files older than DURATION; never a waiting or running job, "
                                   "nor a result an idempotency record points to.  Prints each path removed.")
    p.add_argument("--older-than", dest="older_than", required=True, metavar="DURATION", type=_duration,
                   help="age of what is removed: 30d, 12h, 90m, 2w or seconds; 0s removes everything "
                        "finished so far")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print what would be removed, remove nothing")
    add_options(p, RUN_OPTIONS, ("jobs_dir", "results_dir"))


def _duration(text):
    import argparse
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_prune(args) -> int:
    """Run prune for the CLI: one line per path, a summary on stderr; 0, or 1 when a removal
    failed, 2 for a missing directory."""
    import sys

    from ..job.errors import ConfigError
    from .exitcodes import EXIT_NOT_ALL_REMOVED, EXIT_OK
    from .options import setting, usage_error
    from .preflight import existing_dir
    jobs_dir, results_dir = setting(args, "jobs_dir"), setting(args, "results_dir")
    try:
        existing_dir("--jobs-dir", jobs_dir)
        existing_dir("--results-dir", results_dir)
    except ConfigError as exc:
        return usage_error(str(exc))
    report = prune(jobs_dir, results_dir, args.older_than, dry_run=args.dry_run)
    prefix = "would remove " if args.dry_run else "removed "
    for path in report.removed:
        print(prefix + path)
    for error in report.errors:
        print(f"guestkit-worker: prune: cannot remove {error}", file=sys.stderr)
    print(f"{'would remove' if args.dry_run else 'removed'} {len(report.removed)} file(s); kept "
          f"{report.kept_active} of waiting or running jobs and {report.kept_idempotent} result(s) "
          f"idempotency records point to", file=sys.stderr)
    return EXIT_NOT_ALL_REMOVED if report.errors else EXIT_OK
