"""Reading files copied out of a guest: byte caps, a shared error type, and the checks every
package reader applies to names and versions (a guest's files are untrusted input)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Callable

#: the most bytes a reader takes from one package database or os-release copy
MAX_DB_BYTES = 256 * 1024 * 1024
MAX_TEXT_DB_BYTES = 64 * 1024 * 1024
MAX_OS_RELEASE_BYTES = 64 * 1024
#: longest package name / version / arch kept; longer values make the entry skipped
MAX_NAME = 256
MAX_VERSION = 256
#: at most this many notes about skipped entries are kept (then one "and N more")
MAX_NOTES = 20

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+~-]*")
VERSION_RE = re.compile(r"[A-Za-z0-9_.+~:^-]+")
ARCH_RE = re.compile(r"[A-Za-z0-9_-]*")


class PackageDbError(Exception):
    """A guest's package database (or os-release) cannot be read at all; one-line message."""


def read_capped(path: str, cap: int, what: str) -> bytes:
    """The file's bytes, or PackageDbError when it holds more than cap bytes."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        raise PackageDbError(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > cap:
        raise PackageDbError(f"{what} is larger than {cap} bytes; not read")
    return data


def clean(value: str | None, pattern: re.Pattern, limit: int) -> str | None:
    """value when it is non-empty, at most limit characters and matches pattern; else None."""
    if not value or len(value) > limit or not pattern.fullmatch(value):
        return None
    return value


def utf8(raw: bytes | None) -> str | None:
    """raw decoded as UTF-8; None when absent or not UTF-8."""
    try:
        return None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def optional_arch(value: str | None) -> str | None:
    """An architecture value: "" when absent, None when implausible."""
    return clean(value, ARCH_RE, MAX_NAME) if value else ""


def paragraphs(data: bytes, field: Callable[[bytes], tuple[str, bytes] | None]) -> Iterator[dict]:
    """Each blank-line-separated paragraph of ``data`` (dpkg's status, apk's installed) as
    {key: raw value} of the lines ``field`` keeps (it returns (key, value) or None)."""
    entry: dict = {}
    for line in data.split(b"\n"):
        if not line.strip():
            if entry:
                yield entry
            entry = {}
            continue
        kept = field(line)
        if kept is not None:
            entry[kept[0]] = kept[1]
    if entry:
        yield entry


def identity(name: bytes | None, version: bytes | None, arch: bytes | None) -> tuple | None:
    """(name, version, arch) of a package entry's raw values, checked as every reader checks
    them; None when one is implausible (the entry is then skipped with a note)."""
    checked = (clean(utf8(name), NAME_RE, MAX_NAME), clean(utf8(version), VERSION_RE, MAX_VERSION),
               optional_arch(utf8(arch)))
    return None if None in checked else checked


class Notes:
    """Notes about skipped entries, capped at MAX_NOTES plus one count of the rest."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.items) < MAX_NOTES:
            self.items.append(text[:300])
        else:
            self.dropped += 1

    def as_list(self) -> list[str]:
        if self.dropped:
            return self.items + [f"... and {self.dropped} more entries skipped"]
        return list(self.items)
