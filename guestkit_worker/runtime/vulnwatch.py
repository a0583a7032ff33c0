"""The worker's side of vulnerability scanning: the scan counts handed to the metrics, and a
thread that keeps the shared OSV index fresh.

The vulnerability library and the metrics import nothing of each other; the worker joins them
here.  With --vuln-db the refresher indexes the database when the worker starts and looks for
changed files every :data:`REFRESH_SECONDS`, so the first scan does not wait for indexing nor
for the scanning libraries' first use (:func:`~..vulns.scanning.warm_up`), and
``guestkit_vuln_db_age_seconds`` exists, and follows a refreshed database, without any scan.
"""

from __future__ import annotations

import logging
import threading

from ..vulns.osvdb import ScanError, shared_database
from ..vulns.stats import STATS

log = logging.getLogger(__name__)

#: how often the refresher looks for a changed database (a scan looks at every call anyway)
REFRESH_SECONDS = 300.0


def scan_snapshot() -> dict:
    """The counts ScanTotals exports: the last opened database's age and records, the findings."""
    snapshot = STATS.snapshot()
    database = snapshot["database"]
    return {"age_seconds": database.age_seconds() if database is not None else None,
            "records": dict(database.by_ecosystem) if database is not None else {},
            "findings": snapshot["findings"], "scans": snapshot["scans"]}


class DatabaseRefresher:
    """Indexes ``path`` at start, then every ``interval`` seconds re-indexes it if it changed."""

    def __init__(self, path: str, interval: float = REFRESH_SECONDS):
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""
        self._warmed = None  # the index the scanning libraries were last warmed on

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vuln-db", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)

    def _warm_up(self, database) -> None:
        """The scan's first-use work done now (imports, CVSS scores), not in the first job."""
        try:
            from ..vulns.scanning import warm_up
            seconds = warm_up(database)
        except ImportError as exc:  # the scan extra is missing: the jobs will say so
            log.warning("vulnerability scans cannot run: %s", exc)
        else:
            log.info("vulnerability scanning warmed up in %.1f s", seconds)
        self._warmed = database

    def refresh(self) -> None:
        """Index (or find unchanged) the database; an unusable one is logged once per reason."""
        try:
            database = shared_database(self.path)
        except ScanError as exc:
            if exc.message != self._last_error:
                log.warning("vulnerability database: %s (scans fail with %s until it is fixed)",
                            exc.message, exc.code)
            self._last_error = exc.message
            return
        except Exception:  # a bug must not end the thread: scans still open the database themselves
            log.exception("vulnerability database %s: indexing failed", self.path)
            return
        if database is not self._warmed:
            self._warm_up(database)
        if self._last_error or not STATS.snapshot()["database"]:
            log.info("vulnerability database %s: %d records indexed in %.1f s", self.path,
                     database.records, database.index_seconds)
        self._last_error = ""
        STATS.record_database(database)
