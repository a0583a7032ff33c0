"""Exact matching of installed packages against OSV records, as the OSV schema defines it.

Public API::

    range_status(kind: str, version: str, events: tuple) -> tuple[bool, str | None]
    entry_status(kind: str, version: str, entry: osvdb.Affected) -> tuple[bool, str | None]
    match_source(database: osvdb.OsvDatabase, ecosystem: str, kind: str, source: str,
                 version: str) -> list[tuple[osvdb.Record, str | None, str]]
    findings_for(package: model.InstalledPackage, matches: list[tuple]) -> list[model.Finding]
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

from . import severity, versions
from .model import Finding, InstalledPackage
from .osvdb import Affected, OsvDatabase


def _event_order(kind: str, event: tuple):
    """Where an event sorts: ``introduced: "0"`` before every version, the rest by version."""
    if event[0] == "introduced" and event[1] == "0":
        return (0, ())
    return (1, _bound(kind, event[1]))


def _bound(kind: str, version: str):
    """A database bound's order key (its syntax is not checked: a bad one sorts somewhere)."""
    return versions.key(kind, version, checked=False)


def range_status(kind: str, version: str, events: tuple) -> tuple[bool, str | None]:
    """Whether ``version`` lies in the range given by ``events`` ((event, version) pairs), and
    the first ``fixed`` version above it.  ValueError when a version cannot be parsed."""
    mine = versions.key(kind, version)
    if len(events) == 2 and events[0] == ("introduced", "0") and events[1][0] == "fixed":
        fixed = events[1][1]  # the common shape: affected below the fix
        return (True, fixed) if mine < _bound(kind, fixed) else (False, None)
    ordered = sorted(events, key=lambda event: _event_order(kind, event))
    affected = False
    for event, bound in ordered:
        if event == "introduced":
            if bound == "0" or mine >= _bound(kind, bound):
                affected = True
        elif event == "fixed":
            if mine >= _bound(kind, bound):
                affected = False
        elif event == "last_affected" and mine > _bound(kind, bound):
            affected = False
    limits = [bound for event, bound in events if event == "limit"]
    if affected and limits:
        affected = any(bound == "*" or mine < _bound(kind, bound) for bound in limits)
    if not affected:
        return False, None
    for event, bound in ordered:
        if event in ("fixed", "last_affected") and mine < _bound(kind, bound):
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


def match_source(database: OsvDatabase, ecosystem: str, kind: str, source: str,
                 version: str) -> list[tuple]:
    """(record, fixed version, severity) of each record affecting ``source`` at ``version``:
    what every binary package built from that source shares."""
    found: dict[str, list] = {}
    for entry in database.candidates(ecosystem, source):
        hit, fixed = entry_status(kind, version, entry)
        if not hit:
            continue
        known = found.get(entry.record.id)
        if known is not None:  # several entries or ranges of one record: keep a known fix
            if known[1] is None and fixed is not None:
                known[1] = fixed
            continue
        found[entry.record.id] = [entry.record, fixed, severity.rate(entry)]
    return [tuple(item) for item in found.values()]


def findings_for(package: InstalledPackage, matches: list[tuple]) -> list[Finding]:
    """One Finding per match of ``package``'s source."""
    source = package.source_name or package.name
    version = package.source_version or package.version
    return [Finding(id=record.id, aliases=list(record.aliases), package=package.name,
                    version=package.version, source_package=source, source_version=version,
                    fixed_version=fixed, severity=rating, summary=record.summary)
            for record, fixed, rating in matches]


def match_package(database: OsvDatabase, ecosystem: str, package: InstalledPackage) -> list[Finding]:
    """One Finding per record that affects ``package``'s source in ``ecosystem``."""
    matches = match_source(database, ecosystem, package.kind, package.source_name or package.name,
                           package.source_version or package.version)
    return findings_for(package, matches)
