"""What a guest has installed, from the files the inspection probe copied out of it.

The probe (``engines/guestfs_probe.py --extract-dir DIR``) copies os-release and the package
databases, each capped in size, into DIR and writes ``manifest.json``:
``{"files": {guest path: file name in DIR}, "notes": [...]}``.  :func:`read_inventory` picks
the database that belongs to the distribution (dpkg for Debian and Ubuntu, apk for Alpine, rpm
for the Red Hat family; otherwise the first found of dpkg, rpm, apk) and reads it with the pure
readers of this package.  Everything odd becomes a note in the result, never silence.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

from . import apk, dpkg, osrelease, rpmdb
from .guestfiles import PackageDbError, read_capped
from .model import APK, DPKG, RPM, GuestOS, InstalledPackage

MANIFEST = "manifest.json"
MAX_MANIFEST = 1024 * 1024
KIND_OF_OS = {"debian": DPKG, "ubuntu": DPKG, "alpine": APK, "rocky": RPM, "almalinux": RPM,
              "rhel": RPM, "centos": RPM, "fedora": RPM, "ol": RPM, "amzn": RPM}
LABELS = {DPKG: "dpkg status file", RPM: "rpm database", APK: "apk installed database"}


@dataclass
class Inventory:
    """The guest's OS, its installed packages, the database read and notes about the rest."""

    guest_os: GuestOS
    packages: list[InstalledPackage] = field(default_factory=list)
    database: str | None = None
    database_path: str | None = None
    notes: list[str] = field(default_factory=list)


def _manifest(directory: str) -> dict:
    try:
        doc = json.loads(read_capped(os.path.join(directory, MANIFEST), MAX_MANIFEST, "the manifest"))
    except (PackageDbError, ValueError) as exc:
        raise PackageDbError(f"the probe's list of copied files is unreadable: {exc}") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        raise PackageDbError("the probe's list of copied files has no 'files' object")
    return doc


def _local(directory: str, files: dict, guest_paths) -> tuple[str, str] | None:
    """(guest path, local path) of the first guest path that was copied."""
    for guest_path in guest_paths:
        name = files.get(guest_path)
        if isinstance(name, str) and name == os.path.basename(name) and name not in ("", ".", ".."):
            return guest_path, os.path.join(directory, name)
    return None


def _readers(directory: str, files: dict, stop: threading.Event | None) -> dict:
    """kind -> (guest path, reader call) for each database the probe copied."""
    found = {}
    hit = _local(directory, files, [dpkg.STATUS_PATH])
    if hit:
        found[DPKG] = (hit[0], lambda p=hit[1]: dpkg.read_status(p))
    hit = _local(directory, files, [apk.INSTALLED_PATH])
    if hit:
        found[APK] = (hit[0], lambda p=hit[1]: apk.read_installed(p))
    hit = _local(directory, files, rpmdb.SQLITE_PATHS)
    if hit:
        found[RPM] = (hit[0], lambda p=hit[1]: rpmdb.read_sqlite(p))
    else:
        hit = _local(directory, files, rpmdb.BDB_PATHS)
        if hit:
            found[RPM] = (hit[0], lambda p=hit[1]: rpmdb.read_bdb(p, stop))
    return found


def read_inventory(directory: str, stop: threading.Event | None = None) -> Inventory:
    """The Inventory of a probe's extract directory; PackageDbError when the chosen database
    cannot be read at all (entries it skips are notes).  ``stop`` (the job's cancel event)
    stops a reader's helper process (db_dump)."""
    doc = _manifest(directory)
    files = doc["files"]
    notes = [str(n)[:300] for n in (doc.get("notes") or [])[:20]]
    hit = _local(directory, files, osrelease.PATHS)
    guest_os = osrelease.read_os_release(hit[1] if hit else None)
    inv = Inventory(guest_os=guest_os)
    found = _readers(directory, files, stop)
    kind = KIND_OF_OS.get(guest_os.id) or next((k for k in (DPKG, RPM, APK) if k in found), None)
    if kind is None or kind not in found:
        wanted = LABELS[kind] if kind else "package database (dpkg, rpm or apk)"
        notes.append(f"no {wanted} found in the guest; no package was read")
    else:
        inv.database, (inv.database_path, read) = kind, found[kind]
        inv.packages, skipped = read()
        notes.extend(skipped)
        if not inv.packages:
            notes.append(f"the {LABELS[kind]} {inv.database_path} lists no installed package")
    for other in sorted(set(found) - {kind}):
        notes.append(f"the {LABELS[other]} {found[other][0]} was not read: the guest's packages "
                     f"are {kind or 'unknown'}'s")
    if guest_os.note:
        notes.append(guest_os.note)
    inv.notes = notes
    return inv
