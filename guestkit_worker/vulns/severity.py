"""A finding's severity: critical, high, medium, low or unknown.

Public API::

    RATINGS: tuple[str, ...]                          # most severe first, "unknown" last
    rating_from_score(score: float) -> str            # the CVSS rating bands
    rating_from_vector(kind: str, vector: str) -> str | None
    rating_from_label(label: str) -> str | None       # a distribution's own severity word
    warm_vectors(entries: Iterable[osvdb.Affected]) -> int
    rate(entry: osvdb.Affected) -> str

The rating comes from the CVSS vector first (the affected entry's own ``severity[]``, else the
record's; CVSS 4 before 3 before 2), scored with the ``cvss`` library and banded as the CVSS
specification's qualitative scale does: 9.0-10.0 critical, 7.0-8.9 high, 4.0-6.9 medium,
0.1-3.9 low (a score of 0.0, "none", gives unknown).  Without a usable vector it comes from
the record's own words (``database_specific`` / ``ecosystem_specific`` ``severity`` or
``urgency``, or a ``severity[]`` of type ``Ubuntu``): Debian's urgencies, Ubuntu's priorities
and Red Hat's impacts map to the same five.  ``cvss`` is imported on first use only.
"""

from __future__ import annotations

import functools

from .osvdb import Affected

RATINGS = ("critical", "high", "medium", "low", "unknown")

#: the CVSS types in the order they are preferred
_CVSS_TYPES = ("CVSS_V4", "CVSS_V3", "CVSS_V2")

_WORDS = {
    "critical": "critical",
    "important": "high", "high": "high",
    "moderate": "medium", "medium": "medium",
    "low": "low", "negligible": "low", "unimportant": "low",
}


def rating_from_score(score: float) -> str:
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    if score > 0.0:
        return "low"
    return "unknown"


_CACHE_SIZE = 8192


@functools.lru_cache(maxsize=_CACHE_SIZE)
def rating_from_vector(kind: str, vector: str) -> str | None:
    """The rating of a CVSS vector of type ``kind`` (CVSS_V2/V3/V4); None when it is unusable."""
    try:
        if kind == "CVSS_V4":
            from cvss import CVSS4

            score = float(CVSS4(vector).base_score)
        elif kind == "CVSS_V3":
            from cvss import CVSS3

            score = float(CVSS3(vector).scores()[0])
        elif kind == "CVSS_V2":
            from cvss import CVSS2

            score = float(CVSS2(vector).scores()[0])
        else:
            return None
    except ImportError:
        raise
    except Exception:  # the library's CVSSError and anything a malformed vector provokes
        return None
    if kind == "CVSS_V2" and score >= 9.0:
        return "high"  # CVSS 2 has no critical band
    return rating_from_score(score)


def warm_vectors(entries) -> int:
    """Score the distinct CVSS vectors of ``entries`` (affected entries and their records) into
    rating_from_vector's cache, at most its size; the count scored.  Run when a database is
    indexed, so that the first scan of a process costs what later ones do."""
    seen: set = set()
    for entry in entries:
        for kind, vector in entry.severity + entry.record.severity:
            if kind in _CVSS_TYPES and (kind, vector) not in seen and len(seen) < _CACHE_SIZE:
                seen.add((kind, vector))
                rating_from_vector(kind, vector)
    return len(seen)


def rating_from_label(label: str) -> str | None:
    return _WORDS.get(label.strip().lower())


def _from_vectors(severity: tuple) -> str | None:
    for kind in _CVSS_TYPES:
        for typ, score in severity:
            if typ == kind:
                rating = rating_from_vector(kind, score)
                if rating is not None:
                    return rating
    return None


def _from_labels(severity: tuple, labels: tuple) -> str | None:
    words = list(labels) + [score for typ, score in severity if typ not in _CVSS_TYPES]
    for word in words:
        rating = rating_from_label(word)
        if rating is not None:
            return rating
    return None


def rate(entry: Affected) -> str:
    """The severity of a finding from ``entry`` (one affected[] entry of a record): the entry's
    vector, the record's vector (computed once per record), the entry's words, the record's."""
    record = entry.record
    rating = _from_vectors(entry.severity) if entry.severity else None
    if rating is None:
        if record.rating is None:
            record.rating = _from_vectors(record.severity) or ""
        rating = record.rating
    if not rating:
        rating = (_from_labels(entry.severity, entry.labels)
                  or _from_labels(record.severity, record.labels))
    return rating or "unknown"
