"""What a queue may keep about a job without judging it: its operation, attempt and whether it
may be cancelled while it runs, read leniently from any document (one that would not validate
too: a producer may queue anything).  The one reader of these fields for the transports, so
that the protocol's defaults (``execution.attempt`` 1, ``execution.cancellable`` true) live in
the job layer alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .protocol import EXECUTION_DEFAULTS


@dataclass(frozen=True)
class JobFacts:
    """``operation`` (None when the document names none), ``attempt`` (the protocol's default
    when absent or not an integer) and ``cancellable`` (False only when the document says so)."""

    operation: str | None
    attempt: int
    cancellable: bool


def job_facts(doc: Any) -> JobFacts:
    """The facts of a job document, whatever its shape (a non-object has the defaults).

    Args:
        doc: a decoded job document, valid or not.

    Returns:
        Its :class:`JobFacts`.
    """
    doc = doc if isinstance(doc, dict) else {}
    ex = doc.get("execution") if isinstance(doc.get("execution"), dict) else {}
    operation = doc.get("operation") if isinstance(doc.get("operation"), str) else None
    attempt = ex.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        attempt = EXECUTION_DEFAULTS["attempt"]
    cancellable = ex.get("cancellable", EXECUTION_DEFAULTS["cancellable"]) is not False
    return JobFacts(operation, attempt, cancellable)
