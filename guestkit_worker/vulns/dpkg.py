"""Installed packages from dpkg's status file (``/var/lib/dpkg/status``).

Only stanzas with ``Status: install ok installed`` count: a package removed with its
configuration files left (``deinstall ok config-files``), half-installed or unpacked one is
not installed.  ``Source:`` names the source package OSV records are keyed by; ``Source: NAME
(VERSION)`` gives its version when it differs from the binary's (a binNMU, ``+b1``); without
``Source:`` the source is the binary itself.  Entries whose name, version or architecture is
not a plausible dpkg value (NUL bytes, non-UTF-8, kilobytes long) are skipped with a note.
"""

from __future__ import annotations

import re

from .guestfiles import (
    MAX_NAME,
    MAX_TEXT_DB_BYTES,
    MAX_VERSION,
    NAME_RE,
    VERSION_RE,
    Notes,
    clean,
    identity,
    paragraphs,
    read_capped,
    utf8,
)
from .model import DPKG, InstalledPackage

STATUS_PATH = "/var/lib/dpkg/status"
KEPT_FIELDS = ("package", "status", "version", "source", "architecture")
SOURCE_RE = re.compile(r"(\S+)(?:\s+\((\S+)\))?")


def _field(line: bytes) -> tuple[str, bytes] | None:
    """A kept field's (lower-case name, raw value); continuation lines (Description,
    Conffiles) and other fields are dropped."""
    if line[:1] in (b" ", b"\t"):
        return None
    name, sep, value = line.partition(b":")
    key = name.strip().lower().decode("ascii", "replace")
    return (key, value.strip()) if sep and key in KEPT_FIELDS else None


def _package(fields: dict, notes: Notes) -> InstalledPackage | None:
    status = utf8(fields.get("status")) or ""
    if status.split() != ["install", "ok", "installed"]:
        return None
    label = (utf8(fields.get("package")) or "?")[:60]
    checked = identity(fields.get("package"), fields.get("version"), fields.get("architecture"))
    if checked is None:
        notes.add(f"dpkg status: package {label!r} skipped (unreadable name, version or architecture)")
        return None
    name, version, arch = checked
    source_name, source_version = name, version
    raw_source = utf8(fields.get("source"))
    if raw_source is not None:
        m = SOURCE_RE.fullmatch(raw_source)
        src = clean(m.group(1), NAME_RE, MAX_NAME) if m else None
        src_ver = clean(m.group(2), VERSION_RE, MAX_VERSION) if m and m.group(2) else version
        if src is None or src_ver is None:
            notes.add(f"dpkg status: package {name!r} skipped (unreadable Source field)")
            return None
        source_name, source_version = src, src_ver
    return InstalledPackage(name=name, version=version, source_name=source_name,
                            source_version=source_version, arch=arch, kind=DPKG)


def parse_status(data: bytes) -> tuple[list[InstalledPackage], list[str]]:
    """(installed packages, notes about skipped entries) of a dpkg status file's bytes."""
    notes = Notes()
    packages = []
    for fields in paragraphs(data, _field):
        package = _package(fields, notes)
        if package is not None:
            packages.append(package)
    return packages, notes.as_list()


def read_status(path: str, cap: int = MAX_TEXT_DB_BYTES) -> tuple[list[InstalledPackage], list[str]]:
    """parse_status of the file at path (at most cap bytes, else PackageDbError)."""
    return parse_status(read_capped(path, cap, "the dpkg status file"))
