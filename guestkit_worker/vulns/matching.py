"""Exact matching of installed packages against OSV records, as the OSV schema defines it.

Public API::

    range_status(kind: str, version: str, events: tuple) -> tuple[bool, str | None]
    entry_status(kind: str, version: str, entry: osvdb.Affected) -> tuple[bool, str | None]
    match_package(database: osvdb.OsvDatabase, ecosystem: str,
                  package: model.InstalledPackage) -> list[model.Finding]

A package is looked up by its SOURCE name in exactly the guest's ecosystem, and its SOURCE
version is compared under its format's order (:mod:`.versions`).  An ECOSYSTEM range's events
are sorted by version (``introduced: "0"`` first) and walked: ``introduced`` at or below the
version makes it affected, ``fixed`` at or below and ``last_affected`` below make it
unaffected again, and when the range has ``limit`` events the version must also be below one
of them.  A version listed in ``affected[].versions`` is affected too.  The fixed version of
a finding is the range's first ``fixed`` event above the installed version (None when the
affected interval is closed by ``last_affected`` or open).  A range holding a version its
format cannot parse is ignored.
"""

from __future__ import annotations

import functools

from . import severity, versions
from .model import Finding, InstalledPackage
from .osvdb import Affected, OsvDatabase


def _event_key(kind: str):
    def order(a: tuple, b: tuple) -> int:
        if a[1] == b[1]:
            return 0
        if a[0] == "introduced" and a[1] == "0":
            return -1
        if b[0] == "introduced" and b[1] == "0":
            return 1
        return versions.compare(kind, a[1], b[1])
    return functools.cmp_to_key(order)


def _above(kind: str, version: str, bound: str) -> bool:
    return versions.compare(kind, version, bound) < 0


def range_status(kind: str, version: str, events: tuple) -> tuple[bool, str | None]:
    """Whether ``version`` lies in the range given by ``events`` ((event, version) pairs), and
    the first ``fixed`` version above it.  ValueError when a version cannot be parsed."""
    ordered = sorted(events, key=_event_key(kind))
    affected = False
    for event, bound in ordered:
        if event == "introduced":
            if bound == "0" or versions.compare(kind, version, bound) >= 0:
                affected = True
        elif event == "fixed":
            if versions.compare(kind, version, bound) >= 0:
                affected = False
        elif event == "last_affected" and versions.compare(kind, version, bound) > 0:
            affected = False
    limits = [bound for event, bound in events if event == "limit"]
    if affected and limits:
        affected = any(bound == "*" or _above(kind, version, bound) for bound in limits)
    if not affected:
        return False, None
    for event, bound in ordered:
        if event in ("fixed", "last_affected") and _above(kind, version, bound):
            return True, bound if event == "fixed" else None
    return True, None


def entry_status(kind: str, version: str, entry: Affected) -> tuple[bool, str | None]:
    """Whether ``version`` is affected by one affected[] entry: by one of its ranges (the
    first matching range's fixed version) or by its versions list (no fixed version)."""
    for events in entry.ranges:
        try:
            hit, fixed = range_status(kind, version, events)
        except ValueError:  # a version the format cannot parse: this range says nothing
            continue
        if hit:
            return True, fixed
    return version in entry.versions, None


def match_package(database: OsvDatabase, ecosystem: str, package: InstalledPackage) -> list[Finding]:
    """One Finding per record that affects ``package``'s source in ``ecosystem``."""
    source = package.source_name or package.name
    version = package.source_version or package.version
    found: dict[str, Finding] = {}
    for entry in database.candidates(ecosystem, source):
        record = entry.record
        hit, fixed = entry_status(package.kind, version, entry)
        if not hit:
            continue
        known = found.get(record.id)
        if known is not None:  # several entries or ranges of one record: keep a known fix
            if known.fixed_version is None and fixed is not None:
                known.fixed_version = fixed
            continue
        found[record.id] = Finding(
            id=record.id, aliases=list(record.aliases), package=package.name, version=package.version,
            source_package=source, source_version=version, fixed_version=fixed,
            severity=severity.rate(entry), summary=record.summary)
    return list(found.values())
