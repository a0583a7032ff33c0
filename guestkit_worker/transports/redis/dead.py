"""The pool's dead letters (:class:`RedisDeadLetters`): the ``dead`` stream that the queue,
the reclaimer and the commit write (each entry: ``reason``, ``detail``, the original ``entry``
id, ``worker``, ``stream``, then the original entry's own fields, ``job`` among them), read
newest first, queued again (the ``dead_requeue`` script) and deleted."""

from __future__ import annotations

import re
from typing import Any

from ...job.deadletters import job_id_of
from ...job.decode import decode_job_bytes
from ...job.errors import JobFileError
from ...job.protocol import peek_job_id
from ...job.timestamps import stamp
from ..base import DeadLetter, DeadPage, DeadRequeue, InvalidPageToken
from ..common import digest
from .link import RedisLink, text
from .queue import entry_fields, hash_facts

#: a stream entry id, the only entry name of the dead stream (and its page token)
_ENTRY = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _stamp(entry: str) -> str:
    """The time a dead letter was added: its stream entry id's milliseconds, as RFC 3339."""
    return stamp(int(entry.split("-", 1)[0]) / 1000.0)


def _entry(name: Any) -> str | None:
    return name if isinstance(name, str) and _ENTRY.fullmatch(name) else None


class RedisDeadLetters:
    """dead_list, dead_get, dead_requeue and dead_purge over ``link``; max_job_bytes: the
    largest document whose job id is read for a listing."""

    def __init__(self, link: RedisLink, *, max_job_bytes: int) -> None:
        self.link, self.max_job_bytes = link, max_job_bytes

    def _letter(self, eid: Any, fields: Any) -> DeadLetter:
        """One dead letter with its document, from its stream entry."""
        f = entry_fields(fields)
        raw = f.get(b"job")
        job_id = job_id_of(raw, self.max_job_bytes) or peek_job_id({"job_id": text(f.get(b"job_id") or b"")})
        entry = text(eid)
        return DeadLetter(entry, text(f.get(b"reason") or b"unknown"), text(f.get(b"detail") or b""), job_id,
                          _stamp(entry), raw)

    def dead_list(self, limit: int = 100, page_token: str | None = None) -> DeadPage:
        """Newest first; the page token is the id of the last entry shown (the next page starts
        after it even when newer dead letters arrived meanwhile)."""
        limit = max(1, min(int(limit), 1000))
        top = "+"
        if page_token:
            if _entry(page_token) is None:
                raise InvalidPageToken()
            top = "(" + page_token
        link = self.link
        with link.guard("dead_letter"):
            rows = link.s.dead_page(keys=[link.k.dead], args=[top, limit + 1])
        letters = []
        for eid, reason, detail, job_id in rows[:limit]:
            entry = text(eid)
            job_id = peek_job_id({"job_id": text(job_id)})
            letters.append(DeadLetter(entry, text(reason), text(detail), job_id, _stamp(entry)))
        more = len(rows) > limit
        return DeadPage(letters, letters[-1].entry if more else None)

    def dead_get(self, entry: str) -> DeadLetter | None:
        if _entry(entry) is None:
            return None
        link = self.link
        with link.guard("dead_letter"):
            rows = link.r.xrange(link.k.dead, entry, entry)
        return self._letter(*rows[0]) if rows else None

    def dead_requeue(self, entry: str) -> DeadRequeue:
        letter = self.dead_get(entry)
        if letter is None:
            return DeadRequeue("not_found")
        link, k = self.link, self.link.k
        try:  # the document's own job id decides, never the entry's job_id field
            doc = decode_job_bytes(letter.raw or b"", max(self.max_job_bytes, len(letter.raw or b"")))
        except JobFileError:
            doc = None
        job_id = peek_job_id(doc)
        args = [digest(doc), *hash_facts(doc)] if job_id is not None else ["", "", "1", "1"]
        keys = [k.dead, k.jobs, k.index] + ([k.job(job_id)] if job_id else [])
        with link.guard("dead_letter"):
            reply = link.s.dead_requeue(keys=keys, args=[entry, job_id or "", *args, stamp()])
        answer = [text(r) for r in reply]
        if answer[0] == "queued":
            return DeadRequeue("queued", location=f"{k.jobs} {answer[1]}", job_id=job_id)
        if answer[0] == "refused":
            return DeadRequeue("refused", job_id=job_id, reason=answer[1], detail=answer[2])
        return DeadRequeue("not_found")

    def dead_purge(self, entry: str) -> bool:
        if _entry(entry) is None:
            return False
        link = self.link
        with link.guard("dead_letter"):
            return bool(link.r.xdel(link.k.dead, entry))
