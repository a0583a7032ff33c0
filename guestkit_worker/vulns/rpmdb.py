"""Installed packages from an rpm database, read without librpm.

Two formats, both holding one rpm *header* blob per installed package:

* ``rpmdb.sqlite`` (rpm >= 4.16: Fedora 33+, RHEL/Rocky/Alma 9, in /var/lib/rpm or
  /usr/lib/sysimage/rpm): read with Python's own sqlite3 (table ``Packages``, column ``blob``;
  a copied ``-wal`` file beside it is read too).
* Berkeley DB ``Packages`` (RHEL/CentOS 7 and 8): a hash database, dumped with ``db_dump``
  (Debian package db-util, found on PATH at run time; a clear error names it when absent).
  Why db_dump rather than python3-rpm's bdb_ro backend: the worker may run in an interpreter
  without the rpm binding, the headers are then parsed by the same code as sqlite's, and a
  hostile file only ever reaches a small separate process, in its own process group, that is
  killed with its tree after a timeout or when the job is cancelled or times out.

The header blob (big-endian): index count, data length, that many 16-byte entries (tag, type,
offset, count), then the data.  Only NAME, VERSION, RELEASE, EPOCH, ARCH and SOURCERPM are
taken; the source package's name and version come from the SRPM file name
(``openssl-3.0.7-25.el9.src.rpm`` -> ``openssl``, ``3.0.7-25.el9``), with the binary's epoch.
A header that is truncated or points outside itself is skipped with a note.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import threading

from ..system.procs import StreamedChild
from .guestfiles import (
    MAX_DB_BYTES,
    MAX_NAME,
    MAX_VERSION,
    NAME_RE,
    VERSION_RE,
    Notes,
    PackageDbError,
    clean,
    optional_arch,
)
from .model import RPM, InstalledPackage

SQLITE_PATHS = ("/usr/lib/sysimage/rpm/rpmdb.sqlite", "/var/lib/rpm/rpmdb.sqlite")
BDB_PATHS = ("/usr/lib/sysimage/rpm/Packages", "/var/lib/rpm/Packages")
DB_DUMP = "db_dump"
DB_DUMP_HINT = "install the Debian package db-util (db_dump reads rpm's Berkeley DB)"
DB_DUMP_TIMEOUT = 120.0

TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH, TAG_SOURCERPM = 1000, 1001, 1002, 1003, 1022, 1044
WANTED = {TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH, TAG_SOURCERPM}
TYPE_INT32, TYPE_STRING = 4, 6
MAX_INDEX = 0xFFFF  # rpm's own limits on a header's index entries and data
MAX_HEADER = 32 * 1024 * 1024
MAX_PACKAGES = 200_000


class HeaderError(ValueError):
    """An rpm header blob that is truncated or inconsistent."""


def _string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset, offset + MAX_VERSION + 1)
    if end < 0:
        raise HeaderError("unterminated string")
    return data[offset:end].decode("utf-8")


def parse_header(blob: bytes) -> dict[int, object]:
    """The wanted tags of one header blob (strings, EPOCH as int); HeaderError when damaged."""
    if len(blob) < 8 or len(blob) > MAX_HEADER:
        raise HeaderError(f"header of {len(blob)} bytes")
    count, size = struct.unpack_from(">II", blob, 0)
    start = 8 + 16 * count
    if count > MAX_INDEX or start + size > len(blob):
        raise HeaderError("header index or data larger than the blob")
    data = blob[start:start + size]
    tags: dict[int, object] = {}
    for i in range(count):
        tag, kind, offset, n = struct.unpack_from(">iIiI", blob, 8 + 16 * i)
        if tag not in WANTED or offset < 0 or offset >= size or n < 1:
            continue
        try:
            if kind == TYPE_INT32 and offset + 4 <= size:
                tags[tag] = struct.unpack_from(">i", data, offset)[0]
            elif kind == TYPE_STRING:
                tags[tag] = _string(data, offset)
        except UnicodeDecodeError:
            raise HeaderError(f"tag {tag} is not UTF-8") from None
    return tags


def split_srpm(srpm: str) -> tuple[str, str] | None:
    """(name, version-release) of an SRPM file name; None when it is not one."""
    for suffix in (".src.rpm", ".nosrc.rpm"):
        if srpm.endswith(suffix):
            parts = srpm[:-len(suffix)].rsplit("-", 2)
            if len(parts) == 3 and all(parts):
                return parts[0], f"{parts[1]}-{parts[2]}"
    return None


def package_from_header(tags: dict[int, object]) -> InstalledPackage | None:
    """The InstalledPackage of a parsed header; None for implausible values or gpg-pubkey."""
    name = clean(tags.get(TAG_NAME), NAME_RE, MAX_NAME)
    evr = f"{tags.get(TAG_VERSION)}-{tags.get(TAG_RELEASE)}"
    epoch = tags.get(TAG_EPOCH)
    if isinstance(epoch, int) and epoch:
        evr = f"{epoch}:{evr}"
    version = clean(evr, VERSION_RE, MAX_VERSION) if TAG_VERSION in tags and TAG_RELEASE in tags else None
    arch = optional_arch(tags.get(TAG_ARCH))
    if name is None or version is None or arch is None:
        return None
    source = split_srpm(str(tags.get(TAG_SOURCERPM) or ""))
    src_name, src_version = source if source else (name, version)
    if source and isinstance(epoch, int) and epoch:
        src_version = f"{epoch}:{src_version}"
    if clean(src_name, NAME_RE, MAX_NAME) is None or clean(src_version, VERSION_RE, MAX_VERSION) is None:
        src_name, src_version = name, version
    return InstalledPackage(name=name, version=version, source_name=src_name,
                            source_version=src_version, arch=arch, kind=RPM)


def _collect(blobs, notes: Notes) -> list[InstalledPackage]:
    packages = []
    for key, blob in blobs:
        try:
            package = package_from_header(parse_header(blob))
        except HeaderError as exc:
            notes.add(f"rpm database: header {key} skipped ({exc})")
            continue
        if package is None:
            notes.add(f"rpm database: header {key} skipped (unreadable name, version or arch)")
        elif package.name != "gpg-pubkey":  # imported signing keys, not software
            packages.append(package)
        if len(packages) > MAX_PACKAGES:
            raise PackageDbError(f"the rpm database lists more than {MAX_PACKAGES} packages")
    return packages


def _check_size(path: str, what: str) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise PackageDbError(f"cannot read {what}: {exc.strerror or exc}") from None
    if size > MAX_DB_BYTES:
        raise PackageDbError(f"{what} is larger than {MAX_DB_BYTES} bytes; not read")


def read_sqlite(path: str) -> tuple[list[InstalledPackage], list[str]]:
    """Installed packages of an rpmdb.sqlite copy (PackageDbError when it cannot be read)."""
    _check_size(path, "the rpm sqlite database")
    notes = Notes()
    try:
        db = sqlite3.connect(path, timeout=1.0)
    except sqlite3.Error as exc:
        raise PackageDbError(f"the rpm sqlite database cannot be opened: {exc}") from None
    try:
        db.execute("PRAGMA trusted_schema=OFF")
        db.execute("PRAGMA query_only=ON")
        rows = db.execute("SELECT hnum, blob FROM Packages WHERE typeof(blob) = 'blob'")
        packages = _collect(rows, notes)
    except sqlite3.Error as exc:
        raise PackageDbError(f"the rpm sqlite database cannot be read: {exc}") from None
    finally:
        db.close()
    return packages, notes.as_list()


def _dump_pairs(lines):
    """(key hex, value bytes) of db_dump's output lines; values longer than MAX_HEADER skipped."""
    in_data, key = False, None
    for line in lines:
        if not in_data:
            in_data = line.rstrip(b"\n") == b"HEADER=END"
            continue
        if not line.startswith(b" "):
            break  # DATA=END, or a line cut at MAX_HEADER
        if key is None:
            key = line.strip()[:16].decode("ascii", "replace")
            continue
        try:
            yield key, bytes.fromhex(line.strip().decode("ascii"))
        except ValueError:
            yield key, b""
        key = None


def read_bdb(path: str, stop: threading.Event | None = None) -> tuple[list[InstalledPackage], list[str]]:
    """Installed packages of a Berkeley DB ``Packages`` copy, through db_dump, which runs in its
    own process group and is killed with its tree after DB_DUMP_TIMEOUT or once ``stop`` (the
    job's cancel event: cancel, timeout, shutdown) is set."""
    _check_size(path, "the rpm Berkeley DB")
    tool = shutil.which(DB_DUMP)
    if tool is None:
        raise PackageDbError(f"the guest's rpm database is a Berkeley DB and {DB_DUMP} is not "
                             f"installed: {DB_DUMP_HINT}")
    child = StreamedChild([tool, path])
    child.stop_on(stop, DB_DUMP_TIMEOUT)
    notes = Notes()
    try:
        lines = iter(lambda: child.stdout.readline(2 * MAX_HEADER + 64), b"")
        blobs = ((k, v) for k, v in _dump_pairs(lines) if len(v) >= 8)  # key 0: a counter
        packages = _collect(blobs, notes)
    except BaseException:
        child.kill()
        raise
    finally:
        returncode, err = child.finish()
    if stop is not None and stop.is_set():
        raise PackageDbError(f"{DB_DUMP} was stopped: the job was cancelled or timed out")
    if returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        detail = "timed out" if child.stopped.is_set() else (lines[-1][:200] if lines else "no diagnostics")
        if not packages:
            raise PackageDbError(f"{DB_DUMP} cannot read the rpm Berkeley DB: {detail}")
        notes.add(f"rpm Berkeley DB read only in part ({DB_DUMP}: {detail})")
    return packages, notes.as_list()
