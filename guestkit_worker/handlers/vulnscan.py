"""The known-vulnerability scan joined to the inspection's one appliance launch.

The probe copies os-release and the package databases out of the guest into a private
directory of the job (``--extract-dir``); the worker reads them with the pure readers of
:mod:`guestkit_worker.vulns` and matches them against the offline OSV database the worker was
started with (``--vuln-db``, handed to each handler by ``HandlerRegistry.configure_vulns``).
Used by ``guestkit.inspect`` (``options.vulnerabilities``) and ``guestkit.scan``.

The scan's libraries (python-debian, cvss, cyclonedx-python-lib) are the optional extra
``scan``; they are imported only when a scan runs, and their absence is ENGINE_UNAVAILABLE
naming ``pip install '.[scan]' in a checkout``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from typing import Any

from ..job.errors import EngineUnavailable, HandlerError
from ..vulns.guestfiles import PackageDbError
from ..vulns.inventory import read_inventory

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install '.[scan]' in a checkout"


@dataclass
class OpenedImage:
    """A job's image after validation: checked path, format, size, the held chain, the
    report's destination and whether the checksum was verified."""

    path: str
    fmt: str
    size: int
    chain: Any
    dest: str
    overwrite: bool
    checksum: str = "skipped"

    def block(self) -> dict:
        """The report's ``image`` block."""
        return {"path": self.path, "format": self.fmt, "size_bytes": self.size, "checksum": self.checksum}


def missing_extra(exc: ImportError) -> EngineUnavailable:
    """ENGINE_UNAVAILABLE for a library of the scan extra that cannot be imported."""
    return EngineUnavailable(f"a vulnerability scan needs the 'scan' extra ({exc}): {EXTRA_HINT}")


def _scanning():
    try:
        from ..vulns import scanning
    except ImportError as exc:
        raise missing_extra(exc) from None
    return scanning


def scan_summary(report: dict) -> dict:
    """The short form of a scan report: OS, package count, database, summary, notes."""
    return {"os": report.get("os"), "packages": report.get("packages"),
            "database": report.get("database"), "summary": report.get("summary"),
            "notes": report.get("notes", [])[:5]}


class VulnScanning:
    """The scan steps of an inspection handler (mixed into InspectHandler)."""

    #: --vuln-db and --vuln-db-max-age, set by the worker before its first job
    vuln_db_dir = None
    vuln_db_max_age = None

    def configure_vulns(self, db_dir, max_age_seconds) -> None:
        """Take the worker's offline OSV database directory and its age limit."""
        self.vuln_db_dir = db_dir
        self.vuln_db_max_age = max_age_seconds

    def _vuln_database(self):
        """The shared OSV index; VULN_DB_UNAVAILABLE / VULN_DB_STALE as a failed job."""
        scanning = _scanning()
        try:
            return scanning.open_database(self.vuln_db_dir, self.vuln_db_max_age)
        except scanning.ScanError as exc:
            raise HandlerError(getattr(exc, "code", "VULN_DB_UNAVAILABLE"),
                               getattr(exc, "message", None) or str(exc), phase="validation") from None

    @contextlib.contextmanager
    def _extracting(self, context, image, wanted):
        """A private directory of the job for the probe's copies (None unless wanted); the
        directory is removed and the image's chain closed on the way out."""
        extract = None
        try:
            if wanted:
                extract = tempfile.mkdtemp(prefix=f".{context.job_id}.pkgdb-", dir=context.work_dir)
                self._remember(context.job_id, extract)
            yield extract
        finally:
            image.chain.close()
            if extract:
                self._remove_tree(context.job_id, extract)

    def _scan_extracted(self, context, database, extract):
        """(scan report, inventory) of the probe's copies, matched against database."""
        context.progress("scan", 0, "reading the package databases")
        try:
            inventory = read_inventory(extract, stop=context.cancel_event)
        except PackageDbError as exc:
            context.check_cancelled()  # a reader stopped by the job's cancel or timeout
            raise HandlerError("PACKAGE_DB_UNREADABLE", f"the guest's package database cannot be read: "
                               f"{exc}", phase="scan") from None
        context.check_cancelled()
        context.progress("scan", 50, f"matching {len(inventory.packages)} packages")
        scanning = _scanning()
        report = scanning.scan(database, inventory.guest_os, inventory.packages)
        report["inventory"] = {"database": inventory.database, "path": inventory.database_path}
        report["notes"] = scanning.merge_notes(report["notes"], inventory.notes)
        context.progress("scan", 100, f"{report.get('summary', {}).get('total', 0)} findings")
        return report, inventory
