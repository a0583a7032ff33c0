"""Installed packages from apk's database (``/lib/apk/db/installed``).

Each package is a block of ``X:value`` lines ended by a blank line: ``P:`` the name, ``V:``
the version (``1.2.3-r4``), ``A:`` the architecture, ``o:`` the origin, i.e. the source
package (aports) OSV's Alpine records name; an entry without ``o:`` is its own origin.
Implausible values (NUL bytes, non-UTF-8, overlong) make the entry skipped with a note.
"""

from __future__ import annotations

from .guestfiles import (
    MAX_NAME,
    MAX_TEXT_DB_BYTES,
    NAME_RE,
    Notes,
    clean,
    identity,
    paragraphs,
    read_capped,
    utf8,
)
from .model import APK, InstalledPackage

INSTALLED_PATH = "/lib/apk/db/installed"
KEPT = {b"P": "name", b"V": "version", b"A": "arch", b"o": "origin"}


def _field(line: bytes) -> tuple[str, bytes] | None:
    key = KEPT.get(line[:1]) if line[1:2] == b":" else None
    return (key, line[2:].strip()) if key else None


def parse_installed(data: bytes) -> tuple[list[InstalledPackage], list[str]]:
    """(installed packages, notes about skipped entries) of an apk installed file's bytes."""
    notes = Notes()
    packages = []
    for entry in paragraphs(data, _field):
        checked = identity(entry.get("name"), entry.get("version"), entry.get("arch"))
        name, version, arch = checked or (None, None, None)
        origin = clean(utf8(entry.get("origin")) or name, NAME_RE, MAX_NAME)
        if checked is None or origin is None:
            label = (utf8(entry.get("name")) or "?")[:60]
            notes.add(f"apk installed: package {label!r} skipped (unreadable name, version, arch or origin)")
            continue
        packages.append(InstalledPackage(name=name, version=version, source_name=origin,
                                         source_version=version, arch=arch, kind=APK))
    return packages, notes.as_list()


def read_installed(path: str, cap: int = MAX_TEXT_DB_BYTES) -> tuple[list[InstalledPackage], list[str]]:
    """parse_installed of the file at path (at most cap bytes, else PackageDbError)."""
    return parse_installed(read_capped(path, cap, "the apk installed database"))
