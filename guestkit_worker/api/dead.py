"""The dead-letter endpoints of the REST API (and, run in-process, of the ``dead`` command):
list, show, requeue and purge over a transport's primitive dead-letter operations.

The policy lives here, not in the transports: a dead letter whose document still cannot be a
job (no document, over --max-job-size, not JSON, no job id) is refused a requeue with its
reason (422), since a worker would only move it aside again; one the transport finds to be a
duplicate of another job is refused too (409).  Requeues and purges are counted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Callable

from ..job.deadletters import unrunnable
from ..transports.base import DeadLetter, InvalidPageToken, Transport
from .jobs import JOBS_PATH, _bad_param, _number
from .limits import DEFAULT_PAGE, MAX_PAGE
from .responses import Answer, ApiError, ok

log = logging.getLogger(__name__)

DEAD_PATH = "/api/v1/dead"
#: longest entry name looked up (longer ones are no entry of any transport)
MAX_ENTRY = 256
#: the error code of a refused requeue (its reason in details.reason)
NOT_REQUEUEABLE = "NOT_REQUEUEABLE"


def check_entry(entry: str) -> str | None:
    """Why ``entry`` can be no dead letter's name (non-ASCII, control characters, too long),
    or None.  Such a name is refused before any transport sees it."""
    if not entry or len(entry) > MAX_ENTRY:
        return f"entry: must be 1 to {MAX_ENTRY} characters, got {len(entry)}"
    if not (entry.isascii() and entry.isprintable()):
        return "entry: must be printable ASCII, as dead list prints it"
    return None


def _not_found(entry: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"no dead letter {entry}", field="entry")


def refusal(letter: DeadLetter, max_bytes: int) -> tuple[str, str] | None:
    """(reason, detail) when the dead letter's document still cannot become a job for workers
    reading ``max_bytes`` (its own reason when the transport could not give its bytes)."""
    if letter.raw is None:
        return letter.reason, letter.detail or "its document cannot be read"
    return unrunnable(letter.raw, max_bytes)


class DeadApi:
    """``transport``: whose dead letters; ``max_job_bytes``: the workers' --max-job-size, which
    a requeued document must fit; ``on_requeued`` / ``on_purged``: counters' inc."""

    def __init__(self, transport: Transport, *, max_job_bytes: int,
                 on_requeued: Callable[[], None] = lambda: None,
                 on_purged: Callable[[], None] = lambda: None) -> None:
        self.transport, self.max_job_bytes = transport, max_job_bytes
        self.on_requeued, self.on_purged = on_requeued, on_purged

    def _entry(self, entry: str) -> str:
        problem = check_entry(entry)
        if problem is not None:
            raise ApiError(400, "INVALID_PARAMETER", problem, field="entry")
        return entry

    # -- GET /api/v1/dead?limit=&page_token= -------------------------------------------
    def list(self, query: Mapping[str, str]) -> Answer:
        limit = _number(query, "limit", int, low=1, high=MAX_PAGE) or DEFAULT_PAGE
        token = query.get("page_token") or None
        try:
            page = self.transport.dead_list(limit=limit, page_token=token)
        except ValueError:  # InvalidPageToken, or a plug-in transport's own refusal of the token
            if token is None:
                raise
            raise _bad_param("page_token", str(InvalidPageToken())) from None
        return ok({"entries": [e.to_dict() for e in page.entries], "next_page_token": page.next_page_token})

    # -- GET /api/v1/dead/ENTRY --------------------------------------------------------
    def show(self, entry: str) -> Answer:
        letter = self.transport.dead_get(self._entry(entry))
        if letter is None:
            raise _not_found(entry)
        data = letter.to_dict()
        raw = letter.raw
        data["size"] = len(raw) if raw is not None else None
        shown = raw is not None and len(raw) <= self.max_job_bytes  # never an answer larger than a job
        data["document"] = raw.decode("utf-8", "replace") if shown else None
        return ok(data)

    # -- POST /api/v1/dead/ENTRY/requeue -----------------------------------------------
    def requeue(self, entry: str) -> Answer:
        letter = self.transport.dead_get(self._entry(entry))
        if letter is None:
            raise _not_found(entry)
        problem = refusal(letter, self.max_job_bytes)
        if problem is not None:
            raise self._refused(entry, 422, *problem)
        done = self.transport.dead_requeue(entry)
        if done.outcome == "not_found":
            raise _not_found(entry)
        if done.outcome != "queued":
            raise self._refused(entry, 409, done.reason or "refused", done.detail or "")
        self.on_requeued()
        job_id = done.job_id or letter.job_id
        log.info("dead letter %s (job %s) queued again", entry, job_id or "-")
        headers = [("Location", f"{JOBS_PATH}/{job_id}")] if job_id else []
        return ok({"entry": entry, "job_id": job_id, "status": "pending"}, 200, headers)

    @staticmethod
    def _refused(entry: str, status: int, reason: str, detail: str) -> ApiError:
        return ApiError(status, NOT_REQUEUEABLE, f"dead letter {entry} cannot run ({reason}: {detail}); "
                        "purge it, or queue a corrected document", details={"reason": reason})

    # -- DELETE /api/v1/dead/ENTRY -----------------------------------------------------
    def purge(self, entry: str) -> Answer:
        if not self.transport.dead_purge(self._entry(entry)):
            raise _not_found(entry)
        self.on_purged()
        log.info("dead letter %s purged", entry)
        return ok({"entry": entry, "purged": True})
