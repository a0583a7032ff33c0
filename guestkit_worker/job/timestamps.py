"""The one format of every time stamp the worker writes: results and reasons, progress events,
job states in the transports, the inspection report and JSON log lines.  RFC 3339 in UTC with
microseconds and ``Z``, e.g. ``2026-11-28T10:10:30.342027Z``: fixed width, so the stamps of one
day sort as text, and one spelling of UTC for every consumer to parse."""

from __future__ import annotations

import time

_second: tuple[int | None, str] = (None, "")  # (whole second, its formatted prefix), one tuple


def stamp(t: float | None = None) -> str:
    """The time stamp of ``t`` (seconds since the epoch; default now).  The date and time of
    day are formatted once per second: results and log lines of one second share them."""
    global _second
    t = time.time() if t is None else t
    sec = int(t)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{int((t - sec) * 1e6):06d}Z"
