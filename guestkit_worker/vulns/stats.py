"""Counts of the scans this process ran and the database they used, for the metrics layer to
read (the vulnerability library imports no metrics; a collector above both reads these).

Public API::

    STATS: ScanStats
    STATS.record_database(database: osvdb.OsvDatabase) -> None
    STATS.record_findings(by_severity: dict[str, int]) -> None
    STATS.snapshot() -> dict   # {"findings": {severity: total}, "scans": int, "database": db|None}
"""

from __future__ import annotations

import threading

from .osvdb import OsvDatabase
from .severity import RATINGS


class ScanStats:
    """Thread-safe totals since the process started."""

    def __init__(self):
        self._lock = threading.Lock()
        self._findings = dict.fromkeys(RATINGS, 0)
        self._scans = 0
        self._database: OsvDatabase | None = None

    def record_database(self, database: OsvDatabase) -> None:
        """Remember the index a scan opened (its age and records are read at collection)."""
        with self._lock:
            self._database = database

    def record_findings(self, by_severity: dict) -> None:
        with self._lock:
            self._scans += 1
            for rating, count in by_severity.items():
                self._findings[rating] = self._findings.get(rating, 0) + count

    def snapshot(self) -> dict:
        with self._lock:
            return {"findings": dict(self._findings), "scans": self._scans, "database": self._database}


STATS = ScanStats()
