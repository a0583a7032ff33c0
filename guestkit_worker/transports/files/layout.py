"""The file transport's directory tree, its names and the small helpers every part of it shares.

    jobs/                            incoming *.json (producers write NAME.tmp, then rename)
    jobs/.processing/WORKER/         jobs claimed by one worker (NAME.json; NAME.json.running once started)
    jobs/.processing/WORKER.lock     flock held while that worker lives
    jobs/.processing/.running-ids.lock  one byte locked per running job id (nothing is written)
    jobs/.cancel/JOB_ID              a cancel request for a running job
    jobs/done/                       finished jobs (completed, duplicate)
    jobs/failed/                     failed, timed out, cancelled and rejected jobs, each with
                                     NAME.reason.json
    results/JOB_ID-result.json       one result per job, written atomically
    results/JOB_ID-progress.jsonl    progress events
    results/.idempotency/            idempotency key -> reservation or completed record
"""

from __future__ import annotations

import errno
import json
import os
import stat

PROCESSING = ".processing"
CANCEL = ".cancel"
RUNNING_SUFFIX = ".running"
#: A job file given back to jobs/ whose own name a producer has meanwhile reused takes the first
#: free one of NAME.1.json ... NAME.4.json: a lookup by id probes exactly these names, so it
#: never lists jobs/ (a listing costs about 1 ms per 4,000 waiting jobs).  Past them (five
#: collisions of one name waiting at once) it takes NAME.<time_ns>.json, found by listings only.
ALTERNATE_NAMES = 4

#: Longest job file name (bytes) admitted: room for ".running", a collision suffix and
#: ".reason.json" within the 255-byte limit of file names.
MAX_NAME_BYTES = 200


def alternate_names(stem: str) -> list:
    """STEM.1.json ... STEM.4.json: where a give-back goes when STEM.json is taken, and where a
    lookup by id looks after JOB_ID.json."""
    return [f"{stem}.{n}.json" for n in range(1, ALTERNATE_NAMES + 1)]


class Layout:
    """Absolute paths of one jobs directory and one results directory, seen by one worker."""

    def __init__(self, jobs_dir: str, results_dir: str, worker_id: str) -> None:
        self.jobs_dir = os.path.abspath(jobs_dir)
        self.results_dir = os.path.abspath(results_dir)
        self.worker_id = worker_id
        self.processing_root = os.path.join(self.jobs_dir, PROCESSING)
        self.processing = os.path.join(self.processing_root, worker_id)
        self.running_ids_path = os.path.join(self.processing_root, ".running-ids.lock")
        self.cancel_dir = os.path.join(self.jobs_dir, CANCEL)
        self.done_dir = os.path.join(self.jobs_dir, "done")
        self.failed_dir = os.path.join(self.jobs_dir, "failed")
        self.idem_dir = os.path.join(self.results_dir, ".idempotency")

    def inner_dirs(self) -> tuple:
        return (self.processing_root, self.cancel_dir, self.done_dir, self.failed_dir, self.idem_dir)

    def make_dir(self, d: str) -> None:
        """Create d (never world access, whatever the umask); an inner directory must be a real
        directory: a link planted there by whoever can write jobs/ would send files elsewhere."""
        os.makedirs(d, mode=0o770, exist_ok=True)
        if d not in (self.jobs_dir, self.results_dir) and not stat.S_ISDIR(os.lstat(d).st_mode):
            raise OSError(errno.ENOTDIR, f"{d} is a symbolic link or not a directory; refusing to use it")

    def result_path(self, job_id: str) -> str:
        return f"{self.results_dir}/{job_id}-result.json"

    def progress_path(self, job_id: str) -> str:
        return f"{self.results_dir}/{job_id}-progress.jsonl"

    def lock_path(self, worker_id: str) -> str:
        return os.path.join(self.processing_root, worker_id + ".lock")

    def temp_dirs(self) -> list:
        """Where atomic writes leave their temp files."""
        return [self.jobs_dir, self.failed_dir, self.results_dir, self.idem_dir]


def json_bytes(obj) -> bytes:
    """Indented JSON for reasons and idempotency records (job files are written as submitted or
    as one line: see transports.base.job_bytes).  backslashreplace: a job file name that is not
    UTF-8 (surrogate-escaped by os.fsdecode) becomes a \\udcXX escape inside its JSON string
    instead of failing the whole write."""
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8",
                                                                                         "backslashreplace")


_RESULT_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # stateless: shared by threads


def result_bytes(result) -> bytes:
    """One line (jq . shows it indented): json's C encoder, several times faster than indent=2."""
    return (_RESULT_ENCODER.encode(result) + "\n").encode("utf-8", "backslashreplace")


def read_json(path: str):
    """The JSON document at path (never following a link at the last component), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
