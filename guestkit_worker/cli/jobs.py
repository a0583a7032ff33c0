"""The job commands an operator runs: ``status``, ``result``, ``list``, ``cancel`` and
``submit --api``.  With ``--api URL`` they talk to a worker's REST API through the producer
library (:class:`guestkit_worker.client.Client`); without it they act on the local transport directly through
the same endpoint code the API runs (:class:`guestkit_worker.api.jobs.JobsApi`), so both
ways answer alike and exit alike, with the job commands' statuses of :mod:`.exitcodes`
(an HTTP answer maps to one in :func:`_error`; with several files the highest wins).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from ..job.errors import ConfigError
from ..job.states import JOB_STATUSES
from .exitcodes import (
    EXIT_JOBS_FAILED,
    EXIT_NOT_FINISHED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTCOME_UNKNOWN,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from .options import API_CLIENT_OPTIONS, add_api_client_options, add_queue_options, queue_config, setting
from .pages import add_page_options, print_json, print_rows

#: ``--wait`` without a value: wait up to an hour.
DEFAULT_WAIT = 3600.0

CLIENT_COMMANDS = ("status", "result", "list", "cancel")

Reply = tuple[int, Any]


def add_client_commands(sub: Any) -> None:
    """The ``status``, ``result``, ``list`` and ``cancel`` sub-commands."""
    p = sub.add_parser("status", help="show where a job is (pending, running, completed...)",
                       description="Print a job's status as JSON: job_id, status, operation, attempt, "
                                   "worker_id, submitted_at, started_at, completed_at, error.")
    p.add_argument("job_id", metavar="ID")
    p = sub.add_parser("result", help="print a job's result document",
                       description="Print the stored result document of a finished job (exit 0 when it "
                                   "completed, 1 when it failed, timed out, was cancelled or rejected, "
                                   "4 when it has not finished).")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--wait", type=float, nargs="?", const=DEFAULT_WAIT, default=0, metavar="SECONDS",
                   help=f"wait up to SECONDS (default {DEFAULT_WAIT:g}) for the job to finish")
    p = sub.add_parser("list", help="list known jobs, newest first",
                       description="Print one line per job: id, status, operation, submission time.")
    p.add_argument("--status", choices=JOB_STATUSES, default=None, help="only jobs in this status")
    p.add_argument("--operation", default=None, metavar="OP", help="only jobs of this operation")
    add_page_options(p, "jobs")
    p = sub.add_parser("cancel", help="cancel a waiting job, or a running one that allows it",
                       description="Cancel a job: a waiting one never runs and gets a cancelled result; a "
                                   "running one whose execution.cancellable is true is stopped.")
    p.add_argument("job_id", metavar="ID")
    for name in CLIENT_COMMANDS:
        add_api_client_options(sub.choices[name])
        add_queue_options(sub.choices[name].add_argument_group("without --api"))


def _client_setting(args: argparse.Namespace, dest: str) -> str | None:
    return setting(args, dest, API_CLIENT_OPTIONS)


def api_client(args: argparse.Namespace):
    """The job commands' backend over --api and friends (:class:`ApiJobs`), or None without --api."""
    url = _client_setting(args, "api_url")
    if not url:
        return None
    from ..client import Client
    from ..http.auth import load_tokens
    token_file = _client_setting(args, "api_token_file")
    return ApiJobs(Client(url, token=load_tokens(token_file)[0] if token_file else None,
                          ca=_client_setting(args, "api_ca"),
                          client_cert=_client_setting(args, "api_client_cert"),
                          client_key=_client_setting(args, "api_client_key")))


def _ok(data: Any, status: int = 200) -> Reply:
    return status, {"success": True, "data": data}


class ApiJobs:
    """The producer library's :class:`~guestkit_worker.client.Client` as the job commands'
    backend: its calls, their results and typed errors answered as ``(HTTP status, body)``
    like :class:`LocalJobs`, so both ways print and exit alike."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _call(self, call: Callable[[], Reply]) -> Reply:
        from ..client import ApiError, NotFinished
        try:
            return call()
        except NotFinished as exc:
            return _ok({"job_id": exc.job_id, "status": exc.job_status}, 202)
        except ApiError as err:
            return err.status, err.body

    def submit(self, raw: bytes) -> Reply:
        def call() -> Reply:
            done = self.client.submit(raw)
            return _ok({"job_id": done.job_id, "status": done.status}, 202 if done.created else 200)
        return self._call(call)

    def status(self, job_id: str) -> Reply:
        return self._call(lambda: _ok(self.client.status(job_id)))

    def result(self, job_id: str, wait: float = 0) -> Reply:
        return self._call(lambda: _ok(self.client.result(job_id, wait)))

    def cancel(self, job_id: str) -> Reply:
        def call() -> Reply:
            data = self.client.cancel(job_id)
            return _ok(data, 200 if data.get("status") == "cancelled" else 202)
        return self._call(call)

    def list(self, **query: Any) -> Reply:
        return self._call(lambda: _ok(self.client.list(**query)))


class LocalJobs:
    """The API's endpoint code run in this process on the local file transport; answers
    like :class:`ApiJobs`: ``(HTTP status, JSON body)``.  ``opened``: a transport to close."""

    def __init__(self, jobs: Any, opened: Any = None) -> None:
        self.jobs = jobs
        self.opened = opened

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()

    def _call(self, method: Callable, *args: Any) -> Reply:
        from ..api.responses import ApiError, error_body
        try:
            answer = method(*args)
        except ApiError as err:
            return err.status, error_body(err)
        return answer.status, answer.body

    def submit(self, raw: bytes) -> Reply:
        return self._call(self.jobs.submit, raw)

    def status(self, job_id: str) -> Reply:
        return self._call(self.jobs.status, job_id)

    def result(self, job_id: str, wait: float = 0) -> Reply:
        return self._call(self.jobs.result, job_id, {"wait": str(wait)} if wait else {})

    def cancel(self, job_id: str) -> Reply:
        return self._call(self.jobs.cancel, job_id)

    def list(self, **query: Any) -> Reply:
        return self._call(self.jobs.list, {k: str(v) for k, v in query.items() if v is not None})


def _error(reply: Reply, what: str) -> int:
    """Print an error answer; its exit status."""
    status, body = reply
    code = body.get("error", "ERROR") if isinstance(body, dict) else "ERROR"
    message = body.get("message", "") if isinstance(body, dict) else str(body)
    print(f"guestkit-worker: {what}: {code}: {message}", file=sys.stderr)
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_REFUSED
    if status in (400, 411, 413, 415, 422):
        return EXIT_JOBS_FAILED
    if status == 504 and code == "OUTCOME_UNKNOWN":
        return EXIT_OUTCOME_UNKNOWN
    return EXIT_UNAVAILABLE


def _flag_error(body: Any) -> int:
    """A 400 of ``list`` names the query parameter it refused: print it as the flag it came
    from (--page-token, --limit...) in one line; a usage error."""
    details = body.get("details") if isinstance(body, dict) else None
    field = details.get("field") if isinstance(details, dict) else None
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    if not isinstance(field, str) or not message.startswith(field + ": "):
        print(f"guestkit-worker: error: list: {message or body}", file=sys.stderr)
    else:
        flag = "--" + field.replace("_", "-")
        print(f"guestkit-worker: error: {flag}: {message[len(field) + 2:]}", file=sys.stderr)
    return EXIT_USAGE


def _job_line(job: dict) -> tuple:
    """The fields of a job's line in ``jobs list``: id, status, operation, submission time."""
    status = job["status"] + (" (worker gone)" if job.get("worker_gone") else "")
    return job["job_id"], status, job.get("operation") or "-", job.get("submitted_at") or "-"


def _result_exit(data: dict) -> int:
    return EXIT_OK if data.get("status") == "completed" else EXIT_JOBS_FAILED


def wait_for_result(backend: Any, job_id: str, seconds: float) -> Reply:
    """Ask for the result until it is final or ``seconds`` have passed, in steps of at most
    60 s; a busy API and an answer a busy server lost are asked again after a pause
    (:func:`guestkit_worker.client.poll_result`)."""
    from ..client import poll_result
    return poll_result(lambda step: backend.result(job_id, step), seconds)


def run_client_command(args: argparse.Namespace, backend: Any) -> int:
    """status / result / list / cancel against ``backend`` (ApiJobs or LocalJobs)."""
    if args.command == "status":
        reply = backend.status(args.job_id)
        if reply[0] != 200:
            return _error(reply, args.job_id)
        print_json(reply[1]["data"])
        return EXIT_OK
    if args.command == "result":
        reply = wait_for_result(backend, args.job_id, args.wait) if args.wait else backend.result(args.job_id)
        if reply[0] == 202:
            status = reply[1]["data"]["status"]
            print(f"guestkit-worker: {args.job_id}: not finished ({status})", file=sys.stderr)
            return EXIT_NOT_FINISHED
        if reply[0] != 200:
            return _error(reply, args.job_id)
        print_json(reply[1]["data"])
        return _result_exit(reply[1]["data"])
    if args.command == "cancel":
        reply = backend.cancel(args.job_id)
        if reply[0] not in (200, 202):
            return _error(reply, args.job_id)
        done = "cancelled" if reply[0] == 200 else "cancelling (running; its handler is told to stop)"
        print(f"{args.job_id} {done}")
        return EXIT_OK
    reply = backend.list(status=args.status, operation=args.operation, limit=args.limit,
                         page_token=args.page_token)
    if reply[0] == 400:
        return _flag_error(reply[1])
    if reply[0] != 200:
        return _error(reply, "list")
    page = reply[1]["data"]
    if args.json:
        print_json(page)
        return EXIT_OK
    print_rows(page, (_job_line(job) for job in page["jobs"]))
    return EXIT_OK


def _read_job(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as fh:
        return fh.read()


def submit_many(args: argparse.Namespace, backend: Any) -> int:
    """submit JOB.json... through ``backend``; with --wait, then wait for each result."""
    worst, submitted = EXIT_OK, []
    for path in args.jobs:
        try:
            raw = _read_job(path)
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            worst = max(worst, EXIT_JOBS_FAILED)
            continue
        reply = backend.submit(raw)
        if reply[0] not in (200, 202):
            worst = max(worst, _error(reply, path))
            continue
        data = reply[1]["data"]
        note = "" if reply[0] == 202 else " (already submitted)"
        print(f"{data['job_id']} {data['status']}{note}")
        submitted.append(data["job_id"])
    if not args.wait:
        return worst
    end = time.monotonic() + args.wait
    for job_id in submitted:
        reply = wait_for_result(backend, job_id, max(0.0, end - time.monotonic()))
        if reply[0] == 202:
            print(f"{job_id} not finished ({reply[1]['data']['status']})")
            worst = max(worst, EXIT_NOT_FINISHED)
        elif reply[0] != 200:
            worst = max(worst, _error(reply, job_id))
        else:
            print(f"{job_id} {reply[1]['data'].get('status')}")
            worst = max(worst, _result_exit(reply[1]["data"]))
    return worst


def local_jobs(args: argparse.Namespace, allow_paths: list | None = None, *, lock: bool = False) -> LocalJobs:
    """The local transport (the files on --jobs-dir, --results-dir) behind the API's endpoint code.
    ``lock``: open it (take a liveness lock), which cancelling a waiting job needs.  With
    --transport redis (or GUESTKIT_WORKER_TRANSPORT=redis): the pool's Redis keys instead."""
    from ..runtime.config import default_worker_id
    from ..transports import open_transport
    from .preflight import existing_dir
    cfg = queue_config(args, f"{default_worker_id()}-cli")
    if cfg.transport == "file":  # a typo must not create a directory no worker reads
        existing_dir("--jobs-dir", cfg.jobs_dir)
    return _local(open_transport(cfg), allow_paths, cfg.max_job_bytes, lock)


def _local(transport: Any, allow_paths: list | None, max_bytes: int, lock: bool) -> LocalJobs:
    """The API's endpoint code over ``transport`` in this process (opened when ``lock``)."""
    from ..api.jobs import JobsApi
    from ..api.precheck import check_submission
    registry = []

    def check_with_local_handlers(raw: bytes):
        if not registry:  # built on the first submission only: status, list... need no handlers
            from ..handlers import default_registry
            registry.append(default_registry())
            registry[0].configure_paths(allow_paths, transport.protected_paths)
        return check_submission(raw, registry[0], max_bytes)

    if lock:
        transport.open()
    return LocalJobs(JobsApi(transport, check_with_local_handlers), transport if lock else None)


def run_with_backend(args: argparse.Namespace, action: Callable[[argparse.Namespace, Any], int],
                     local: Callable[[argparse.Namespace], Any]) -> int:
    """Build the backend (API client, or ``local(args)``), run ``action``, map errors to exits."""
    from ..client import BadUrl, ClientConfigError, Unreachable
    from ..transports.base import TransportUnavailable
    backend = None
    try:
        backend = api_client(args) or local(args)
        return action(args, backend)
    except BadUrl as exc:
        print(f"guestkit-worker: error: --api {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, ClientConfigError) as exc:
        print(f"guestkit-worker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (Unreachable, TransportUnavailable, OSError) as exc:
        print(f"guestkit-worker: unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        if isinstance(backend, LocalJobs):
            backend.close()


def _job_id_problem(job_id: str) -> str | None:
    """Why ``job_id`` cannot be any job's id (the protocol's rules), or None."""
    from ..job.errors import JobValidationError
    from ..job.protocol import check_job_id
    try:
        check_job_id(job_id)
    except JobValidationError as exc:
        return str(exc)
    return None


def cmd_client(args: argparse.Namespace) -> int:
    """status / result / list / cancel, over --api or on the local directories.  An id no job
    can have is refused here, before any request: a path-like id would otherwise reach the API
    as another path and come back as "not found"."""
    problem = _job_id_problem(args.job_id) if args.command != "list" else None
    if problem is not None:
        print(f"guestkit-worker: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return run_with_backend(args, run_client_command, lambda a: local_jobs(a, lock=a.command == "cancel"))


def cmd_submit_jobs(args: argparse.Namespace, submit_one: Callable[[argparse.Namespace], int],
                    allow_paths: list | None) -> int:
    """submit JOB.json...: over --api, or with --wait through the local transport; otherwise
    each file through ``submit_one`` (the jobs-dir writer), the highest exit status wins."""
    if _client_setting(args, "api_url") or args.wait:
        return run_with_backend(args, submit_many, lambda a: local_jobs(a, allow_paths))
    status = EXIT_OK
    for path in args.jobs:
        args.job = path
        status = max(status, submit_one(args))
    return status


__all__ = ["add_client_commands", "run_client_command", "submit_many",
           "run_with_backend", "ApiJobs", "LocalJobs"]
