"""An offline OSV database read from a directory, indexed once into memory and shared by jobs.

Public API::

    class ScanError(HandlerError):          # ScanError(code: str, message: str)
    VULN_DB_UNAVAILABLE, VULN_DB_STALE      # its codes
    class OsvDatabase:                      # an immutable index; see its attributes
        candidates(ecosystem: str, name: str) -> list[Affected]
        entries() -> Iterator[Affected]
        age_seconds(now: float | None = None) -> float | None
        info(now: float | None = None) -> dict
    load_database(path: str) -> OsvDatabase       # index now, no cache
    shared_database(path: str) -> OsvDatabase     # the cached index, re-indexed on change
    clear_cache() -> None                         # forget every shared index

The directory holds ``<Ecosystem>/all.zip`` files as OSV publishes them (one JSON record per
member) and/or plain ``*.json`` records, at any depth.  Every record is checked before it is
indexed: one that is not JSON, is larger than :data:`MAX_RECORD_BYTES` uncompressed, has a
field of the wrong type or no valid ``modified`` is skipped and counted, never loaded whole and
never fatal; a zip that cannot be opened at all (truncated, corrupt) is skipped and counted as
a file.  Withdrawn records are left out of the index.  Records are indexed under every
``(affected[].package.ecosystem, affected[].package.name)`` they name, exactly as written:
``Debian:11`` and ``Debian:12`` are different keys.

The cache is keyed by the directory and checked on every call: the names, sizes and mtimes
of its files; a change re-indexes (one thread indexes, the others wait for its result).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import sys
import threading
import time
import zipfile
import zlib
from calendar import timegm

from ..job.errors import HandlerError

log = logging.getLogger(__name__)

VULN_DB_UNAVAILABLE = "VULN_DB_UNAVAILABLE"
VULN_DB_STALE = "VULN_DB_STALE"

#: a record larger than this (uncompressed) is skipped, never read whole
MAX_RECORD_BYTES = 8 * 1024 * 1024
#: all records of one database together, uncompressed: bounds the time a zip bomb can take
MAX_TOTAL_BYTES = 4 * 1024 * 1024 * 1024
#: members of one zip (OSV's largest distribution dump has about 66,000): more are refused before
#: zipfile reads its directory, which costs a few hundred bytes of memory per member
MAX_ZIP_MEMBERS = 500_000
_EOCD_SIZE = 22
#: skip reasons kept word for word (the counts are always complete)
MAX_WARNINGS = 20


class ScanError(HandlerError):
    """A vulnerability scan cannot run: the database is missing, unreadable or too old."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message, recoverable=False, phase="execution")


class Record:
    """What a finding needs of one OSV record (the rest of it is not kept).  ``severity`` holds
    the record's ``severity[]`` as (type, score) pairs, ``labels`` the severity words of its
    database_specific / ecosystem_specific, ``rating`` the computed rating (set on first use)."""

    __slots__ = ("id", "aliases", "summary", "modified", "severity", "labels", "rating")

    def __init__(self, rid: str, aliases: tuple, summary: str, modified: float,
                 severity: tuple = (), labels: tuple = ()):
        self.id, self.aliases, self.summary, self.modified = rid, aliases, summary, modified
        self.severity, self.labels = severity, labels
        self.rating: str | None = None


class Affected:
    """One ``affected[]`` entry of one record: its ECOSYSTEM ranges as tuples of (event,
    version) pairs, its listed versions (a tuple), and its own severity (which overrides the
    record's)."""

    __slots__ = ("record", "ranges", "versions", "severity", "labels")

    def __init__(self, record: Record, ranges: tuple, versions: tuple, severity: tuple = (),
                 labels: tuple = ()):
        self.record, self.ranges, self.versions = record, ranges, versions
        self.severity, self.labels = severity, labels


class _Skip(Exception):
    """A record that cannot be indexed; the message says why."""


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)\Z")
_EVENT_KEYS = ("introduced", "fixed", "last_affected", "limit")
_LABEL_KEYS = ("severity", "urgency")


def parse_timestamp(text) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp; _Skip when it is not one."""
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if not match:
        raise _Skip(f"modified is not an RFC 3339 timestamp: {str(text)[:40]!r}")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        seconds = timegm((int(year), int(month), int(day), int(hour), int(minute), int(second)))
    except (ValueError, OverflowError) as exc:
        raise _Skip(f"modified is out of range: {text[:40]!r}") from exc
    if zone not in "Zz":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds + (float(frac) if frac else 0.0)


def format_timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


# -- one record --------------------------------------------------------------------------------


def _typed(doc: dict, key: str, kind, default, where: str):
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise _Skip(f"{where}{key} is {type(value).__name__}, not {kind.__name__}")
    return value


def _strings(values, where: str) -> tuple:
    """``values`` as a tuple of interned strings (versions repeat across records)."""
    if set(map(type, values)) - {str}:
        raise _Skip(f"{where} holds a value that is not a string")
    return tuple(map(sys.intern, values))


def _severity(doc: dict, where: str) -> tuple:
    entries = doc.get("severity")
    if not entries:
        return ()
    if type(entries) is not list:
        raise _Skip(f"{where}severity is {type(entries).__name__}, not list")
    out = []
    for item in entries:
        if type(item) is not dict or type(item.get("type")) is not str or type(item.get("score")) is not str:
            raise _Skip(f"{where}severity[] entry is not {{type: str, score: str}}")
        out.append((item["type"], item["score"]))
    return tuple(out)


def _labels(doc: dict) -> tuple:
    """Severity words of database_specific / ecosystem_specific (ignored when not strings)."""
    out = ()
    for section in ("ecosystem_specific", "database_specific"):
        part = doc.get(section)
        if type(part) is dict:
            for key in _LABEL_KEYS:
                word = part.get(key)
                if type(word) is str:
                    out += (word,)
    return out


def _events(events, where: str) -> tuple:
    if type(events) is not list:
        raise _Skip(f"{where}ranges[].events is {type(events).__name__}, not list")
    parsed = []
    for event in events:
        if type(event) is not dict or len(event) != 1:
            raise _Skip(f"{where}ranges[].events[] entry is not one {{kind: version}}")
        (kind, version), = event.items()
        if kind not in _EVENT_KEYS or type(version) is not str:
            raise _Skip(f"{where}ranges[].events[] has {kind!r}: {type(version).__name__}")
        parsed.append((kind, sys.intern(version)))
    return tuple(parsed)


def _ranges(entry: dict, where: str) -> tuple:
    ranges = entry.get("ranges")
    if not ranges:
        return ()
    if type(ranges) is not list:
        raise _Skip(f"{where}ranges is {type(ranges).__name__}, not list")
    out = []
    for rng in ranges:
        if type(rng) is not dict or type(rng.get("type")) is not str:
            raise _Skip(f"{where}ranges[] entry has no string type")
        events = _events(rng.get("events") or [], where)
        if rng["type"] == "ECOSYSTEM" and events:
            out.append(events)
    return tuple(out)


def _affected(entry, record: Record) -> tuple[str, str, Affected] | None:
    """(ecosystem, name, Affected) of one affected[] entry; None when it can match nothing
    (no ECOSYSTEM range and no versions)."""
    if type(entry) is not dict:
        raise _Skip("affected[] entry is not an object")
    package = entry.get("package")
    if type(package) is not dict or type(package.get("ecosystem")) is not str \
            or type(package.get("name")) is not str:
        raise _Skip("affected[].package has no string ecosystem and name")
    listed = entry.get("versions") or []
    if type(listed) is not list:
        raise _Skip(f"affected[].versions is {type(listed).__name__}, not list")
    versions = _strings(listed, "affected[].versions")
    ranges = _ranges(entry, "affected[].")
    severity = _severity(entry, "affected[].")
    if not ranges and not versions:
        return None
    item = Affected(record, ranges, versions, severity, _labels(entry))
    return sys.intern(package["ecosystem"]), sys.intern(package["name"]), item


def parse_record(doc) -> tuple[Record, list | None]:
    """The record and its ``(ecosystem, name, Affected)`` entries (None instead of the entries
    when it is withdrawn).  Raises _Skip for a document that is not a well-typed OSV record."""
    if not isinstance(doc, dict):
        raise _Skip(f"the record is a JSON {type(doc).__name__}, not an object")
    rid = doc.get("id")
    if not isinstance(rid, str) or not rid:
        raise _Skip("id is missing or not a string")
    where = f"{rid[:80]}: "
    try:
        modified = parse_timestamp(doc.get("modified"))
        aliases = _strings(_typed(doc, "aliases", list, [], where), where + "aliases")
        summary = _typed(doc, "summary", str, "", where).strip()
        if not summary:  # some distributions write only details: keep its first line
            summary = _typed(doc, "details", str, "", where).strip().split("\n", 1)[0]
        record = Record(rid, aliases, summary[:300], modified, _severity(doc, where), _labels(doc))
        withdrawn = _typed(doc, "withdrawn", str, "", where)
        entries = [_affected(e, record) for e in _typed(doc, "affected", list, [], where)]
        entries = [e for e in entries if e is not None]
    except _Skip as exc:
        raise _Skip(str(exc) if str(exc).startswith(where) else where + str(exc)) from None
    return (record, entries) if not withdrawn else (record, None)


# -- the database ------------------------------------------------------------------------------


class OsvDatabase:
    """The in-memory index of one database directory.

    Attributes: ``path``; ``records`` (indexed records); ``withdrawn``; ``skipped`` (records
    not indexed, with ``warnings`` holding the first reasons); ``skipped_files`` (zips that
    could not be opened); ``by_ecosystem`` {ecosystem: records}; ``newest_modified`` (seconds
    since the epoch, None without records); ``indexed_at`` and ``index_seconds``.
    """

    def __init__(self, path: str):
        self.path = path
        self.records = 0
        self.withdrawn = 0
        self.skipped = 0
        self.skipped_files = 0
        self.warnings: list[str] = []
        self.by_ecosystem: dict[str, int] = {}
        self.newest_modified: float | None = None
        self.indexed_at = time.time()
        self.index_seconds = 0.0
        self._index: dict[tuple[str, str], list[Affected]] = {}
        self._bytes = 0

    def candidates(self, ecosystem: str, name: str) -> list:
        """The affected entries naming package ``name`` in exactly ``ecosystem``."""
        return self._index.get((ecosystem, name), [])

    def entries(self):
        """Every indexed affected entry (an iterator over the index, for warming caches)."""
        for entries in self._index.values():
            yield from entries

    def age_seconds(self, now: float | None = None) -> float | None:
        """Seconds since the newest ``modified`` (never negative); None without records."""
        if self.newest_modified is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.newest_modified)

    def info(self, now: float | None = None) -> dict:
        age = self.age_seconds(now)
        return {"path": self.path, "records": self.records, "withdrawn": self.withdrawn,
                "skipped": self.skipped, "skipped_files": self.skipped_files,
                "by_ecosystem": dict(sorted(self.by_ecosystem.items())),
                "newest_modified": format_timestamp(self.newest_modified),
                "age_seconds": None if age is None else int(age),
                "index_seconds": round(self.index_seconds, 3), "warnings": list(self.warnings)}

    # -- building -------------------------------------------------------------------------

    def _warn(self, message: str, files: bool = False) -> None:
        if files:
            self.skipped_files += 1
        else:
            self.skipped += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(printable(message))

    def add_document(self, raw: bytes, origin: str) -> None:
        """Parse and index one record's bytes; a bad one is counted, never raised."""
        try:
            doc = json.loads(raw)
            parsed = parse_record(doc)
        except _Skip as exc:
            self._warn(f"{origin}: {exc}")
            return
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
            self._warn(f"{origin}: not a JSON record ({type(exc).__name__}: {str(exc)[:80]})")
            return
        record, entries = parsed
        if self.newest_modified is None or record.modified > self.newest_modified:
            self.newest_modified = record.modified
        if entries is None:
            self.withdrawn += 1
            return
        self.records += 1
        for ecosystem in {eco for eco, _, _ in entries}:
            self.by_ecosystem[ecosystem] = self.by_ecosystem.get(ecosystem, 0) + 1
        for ecosystem, name, item in entries:
            self._index.setdefault((ecosystem, name), []).append(item)

    def _budget(self, size: int, origin: str) -> bool:
        """Whether a record of ``size`` bytes may be read now (its own and the total limits)."""
        if size > MAX_RECORD_BYTES:
            self._warn(f"{origin}: {size} bytes, more than the {MAX_RECORD_BYTES} a record may have")
            return False
        if self._bytes + size > MAX_TOTAL_BYTES:
            self._warn(f"{origin}: the database passed {MAX_TOTAL_BYTES} bytes uncompressed")
            return False
        self._bytes += size
        return True

    def add_json_file(self, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if not self._budget(size, path):
                    return
                raw = fh.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            self._warn(f"{path}: cannot be read ({exc.strerror or exc})")
            return
        if len(raw) > MAX_RECORD_BYTES:
            self._warn(f"{path}: grew past {MAX_RECORD_BYTES} bytes while read")
            return
        self.add_document(raw, path)

    def add_zip(self, path: str) -> None:
        try:
            declared = declared_members(path)
            if declared is not None and declared > MAX_ZIP_MEMBERS:
                self._warn(f"{path}: declares {declared} members, more than the {MAX_ZIP_MEMBERS} a "
                           "database zip may have: skipped", files=True)
                return
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            self._warn(f"{path}: not a readable zip ({str(exc)[:80]}): skipped", files=True)
            return
        with archive:
            for member in archive.infolist():
                if not member.is_dir():
                    self._add_member(archive, member, f"{path}:{member.filename[:120]}")

    def _add_member(self, archive: zipfile.ZipFile, member: zipfile.ZipInfo, origin: str) -> None:
        if not self._budget(member.file_size, origin):
            return
        try:
            with archive.open(member) as fh:
                raw = fh.read(MAX_RECORD_BYTES + 1)  # bounded even when the declared size lies
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError,
                RuntimeError, ValueError) as exc:
            self._warn(f"{origin}: cannot be decompressed ({type(exc).__name__}: {str(exc)[:80]})")
            return
        if len(raw) > MAX_RECORD_BYTES:
            self._warn(f"{origin}: larger than {MAX_RECORD_BYTES} bytes uncompressed")
            return
        self.add_document(raw, origin)


def printable(text: str) -> str:
    """``text`` with control characters escaped: member names and ids come from the database and
    end up in logs and on terminals (vulndb info)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def declared_members(path: str) -> int | None:
    """The member count a zip's end record declares (zip64 included), read before zipfile builds
    an object per member; None when there is no readable end record (zipfile then says why)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - (_EOCD_SIZE + 0xFFFF))  # the end record, then a comment of <= 64 KiB
        fh.seek(start)
        tail = fh.read()
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or len(tail) - pos < _EOCD_SIZE:
            return None
        total = int.from_bytes(tail[pos + 10:pos + 12], "little")
        locator = tail[pos - 20:pos] if pos >= 20 else b""
        if total != 0xFFFF or not locator.startswith(b"PK\x06\x07"):
            return total
        fh.seek(int.from_bytes(locator[8:16], "little"))  # the zip64 end record
        record = fh.read(56)
    if not record.startswith(b"PK\x06\x06") or len(record) < 40:
        return None
    return int.from_bytes(record[32:40], "little")


def database_files(path: str) -> list[str]:
    """The database's files (``all.zip`` and ``*.json``) under ``path``, sorted; symlinks to
    directories are not followed."""
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files)
                     if name == "all.zip" or name.endswith(".json"))
    return found


def _unavailable(message: str) -> ScanError:
    return ScanError(VULN_DB_UNAVAILABLE, message)


def _check_directory(path: str | None) -> str:
    if not path:
        raise _unavailable("no vulnerability database: --vuln-db is not set; set --vuln-db DIR "
                           "(or GUESTKIT_WORKER_VULN_DB) to a directory of OSV all.zip files")
    if not os.path.isdir(path):
        raise _unavailable(f"--vuln-db {path} is not a directory; point --vuln-db at a directory "
                           "of OSV all.zip files (DIR/Debian/all.zip, ...)")
    return path


def load_database(path: str) -> OsvDatabase:
    """Index the database under ``path`` now.  ScanError VULN_DB_UNAVAILABLE when ``path`` is
    not set, not a directory, or holds no readable record."""
    _check_directory(path)
    started = time.monotonic()
    database = OsvDatabase(path)
    files = database_files(path)
    collecting = gc.isenabled()
    gc.disable()  # the index is millions of acyclic objects: collections while it grows are waste
    try:
        for name in files:
            (database.add_zip if name.endswith(".zip") else database.add_json_file)(name)
    finally:
        if collecting:
            gc.enable()
    database.index_seconds = time.monotonic() - started
    if database.skipped or database.skipped_files:
        log.warning("vulnerability database %s: %d records and %d files skipped (first: %s)", path,
                    database.skipped, database.skipped_files, database.warnings[0])
    if database.records == 0 and database.withdrawn == 0:
        what = "no all.zip or *.json files" if not files else (
            f"no readable OSV record ({database.skipped} records and {database.skipped_files} files skipped)")
        raise _unavailable(f"--vuln-db {path} holds {what}; fill it with OSV's per-ecosystem "
                           "all.zip files (DIR/Debian/all.zip, ...)")
    return database


# -- the shared cache --------------------------------------------------------------------------


def fingerprint(path: str) -> tuple:
    """What changes when the database is replaced: each file's name, size and mtime."""
    out = []
    for name in database_files(path):
        try:
            st = os.stat(name)
        except OSError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class _Cache:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[tuple, OsvDatabase]] = {}
        self.path_locks: dict[str, threading.Lock] = {}

    def get(self, path: str) -> OsvDatabase:
        path = os.path.abspath(_check_directory(path))
        with self.lock:
            path_lock = self.path_locks.setdefault(path, threading.Lock())
        with path_lock:  # one indexing per directory at a time; the others wait for it
            mark = fingerprint(path)
            cached = self.entries.get(path)
            if cached is not None and cached[0] == mark:
                return cached[1]
            database = load_database(path)
            self.entries[path] = (mark, database)
            return database

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


_CACHE = _Cache()


def shared_database(path: str) -> OsvDatabase:
    """The index of ``path`` shared by every job of this process; re-indexed when a file under
    it was added, removed, resized or touched since the last call."""
    return _CACHE.get(path)


def clear_cache() -> None:
    """Forget every shared index (tests, and a worker told to drop memory)."""
    _CACHE.clear()
