"""The entry points a handler calls: open the shared database, then scan a guest's packages.

Public API::

    open_database(path: str | None, max_age_seconds: float,
                  now: float | None = None) -> osvdb.OsvDatabase
    scan(database: osvdb.OsvDatabase, guest_os: model.GuestOS,
         packages: list[model.InstalledPackage], now: float | None = None) -> dict
    warm_up(database: osvdb.OsvDatabase) -> float

``open_database`` returns the index shared by every job (indexed on first use, re-indexed when
the files change) and raises :class:`~.osvdb.ScanError` ``VULN_DB_UNAVAILABLE`` (not set, not
a directory, nothing readable) or ``VULN_DB_STALE`` (newest record older than
``max_age_seconds``; 0 = no limit).

``scan`` returns the whole report::

    {"os": {"id", "version_id", "pretty_name", "ecosystem"},
     "packages": {"count", "unparsable_versions"},
     "database": {"records", "ecosystem_records", "newest_modified", "age_seconds", "skipped"},
     "vulnerabilities": [Finding.as_dict(), ...],  # most severe first, then id, package, version
     "summary": {"total", "by_severity": {critical, high, medium, low, unknown}, "fixable"},
     "notes": ["..."]}                              # always a list; [] when all was looked up

A guest whose OS has no OSV ecosystem, or whose ecosystem the database holds no record of, gets
an empty list and a note in ``notes`` that says why: never a silently empty report.  A handler
adds its readers' notes to the same list (:func:`merge_notes`).
"""

from __future__ import annotations

import time

from . import severity, versions
from .matching import findings_for, match_source
from .model import DPKG, Finding, GuestOS, InstalledPackage
from .osvdb import VULN_DB_STALE, OsvDatabase, ScanError, format_timestamp, shared_database
from .severity import RATINGS
from .stats import STATS


def human_duration(seconds: float) -> str:
    """``9d 4h`` / ``3h 12m`` / ``45s``: an age an operator reads at a glance."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def open_database(path: str | None, max_age_seconds: float, now: float | None = None) -> OsvDatabase:
    """The shared index of ``path``, refused when older than ``max_age_seconds`` (0: no limit)."""
    database = shared_database(path)
    STATS.record_database(database)
    age = database.age_seconds(now)
    if max_age_seconds and age is not None and age > max_age_seconds:
        raise ScanError(VULN_DB_STALE, (
            f"the vulnerability database {path} is {human_duration(age)} old (newest record modified "
            f"{format_timestamp(database.newest_modified)}), past --vuln-db-max-age "
            f"{human_duration(max_age_seconds)}; refresh its all.zip files, or raise "
            "--vuln-db-max-age (0 = no limit)"))
    return database


def warm_up(database: OsvDatabase) -> float:
    """Do now the first-use work a scan would otherwise pay for: import and run python-debian's
    version check and the cvss library, and score the database's CVSS vectors.  The refresher
    calls it after indexing, so the first job's scan costs what later ones do; its seconds."""
    started = time.perf_counter()
    versions.key(DPKG, "1:1.0~rc1-1+deb12u1")
    severity.rating_from_vector("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    severity.rating_from_vector("CVSS_V4", "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N")
    severity.rating_from_vector("CVSS_V2", "AV:N/AC:L/Au:N/C:P/I:P/A:P")
    severity.warm_vectors(database.entries())
    return time.perf_counter() - started


def _os_dict(guest_os: GuestOS) -> dict:
    return {"id": guest_os.id, "version_id": guest_os.version_id, "pretty_name": guest_os.pretty_name,
            "ecosystem": guest_os.ecosystem}


def merge_notes(*lists: list[str]) -> list[str]:
    """One list of the notes given, in order, each once (the OS note reaches a report both from
    the scan and from the inventory that read os-release)."""
    return list(dict.fromkeys(note for notes in lists for note in notes))


def _unparsable(packages: list[InstalledPackage]) -> int:
    count = 0
    for package in packages:
        if package.kind == DPKG:
            try:
                versions.compare(DPKG, package.source_version or package.version, "0")
            except ValueError:
                count += 1
    return count


def _sort_key(finding: Finding) -> tuple:
    rank = RATINGS.index(finding.severity) if finding.severity in RATINGS else len(RATINGS)
    return rank, finding.id, finding.package, finding.version


def _summary(findings: list[Finding]) -> dict:
    by_severity = dict.fromkeys(RATINGS, 0)
    for finding in findings:
        by_severity[finding.severity] = by_severity.get(finding.severity, 0) + 1
    return {"total": len(findings), "by_severity": by_severity,
            "fixable": sum(1 for f in findings if f.fixed_version is not None)}


def _note(guest_os: GuestOS, database: OsvDatabase) -> str | None:
    if guest_os.ecosystem is None:
        what = f"{guest_os.id or 'unknown'} {guest_os.version_id}".strip()
        return guest_os.note or f"no OSV ecosystem is known for {what}: no vulnerabilities were looked up"
    if not database.by_ecosystem.get(guest_os.ecosystem):
        return (f"the vulnerability database {database.path} holds no records for {guest_os.ecosystem}: "
                f"add OSV's {guest_os.ecosystem.split(':')[0]}/all.zip to it")
    return None


def scan(database: OsvDatabase, guest_os: GuestOS, packages: list[InstalledPackage],
         now: float | None = None) -> dict:
    """The vulnerability report of a guest (see the module docstring for its shape)."""
    findings: list[Finding] = []
    if guest_os.ecosystem is not None:
        by_source: dict[tuple, list] = {}  # the binaries of one source share its matches
        for package in packages:
            source = (package.kind, package.source_name or package.name,
                      package.source_version or package.version)
            if source not in by_source:
                by_source[source] = match_source(database, guest_os.ecosystem, *source)
            findings.extend(findings_for(package, by_source[source]))
    findings.sort(key=_sort_key)
    summary = _summary(findings)
    STATS.record_findings(summary["by_severity"])
    age = database.age_seconds(now)
    report = {
        "os": _os_dict(guest_os),
        "packages": {"count": len(packages), "unparsable_versions": _unparsable(packages)},
        "database": {"records": database.records,
                     "ecosystem_records": database.by_ecosystem.get(guest_os.ecosystem or "", 0),
                     "newest_modified": format_timestamp(database.newest_modified),
                     "age_seconds": None if age is None else int(age), "skipped": database.skipped},
        "vulnerabilities": [f.as_dict() for f in findings],
        "summary": summary,
    }
    note = _note(guest_os, database)
    report["notes"] = [note] if note else []
    return report
