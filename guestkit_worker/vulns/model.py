"""The values passed between the package readers, the database and the matcher."""

from __future__ import annotations

from dataclasses import dataclass, field

#: package formats, each with its own version order
DPKG = "dpkg"
RPM = "rpm"
APK = "apk"


@dataclass(frozen=True)
class InstalledPackage:
    """One installed binary package and the source package it was built from.

    ``source_name``/``source_version`` are what OSV records name for Debian, Ubuntu, Alpine,
    Rocky and Alma; they equal ``name``/``version`` when the database gives no source.
    ``version`` is the full version string in the format's own syntax (dpkg
    ``[EPOCH:]UPSTREAM[-REVISION]``, rpm ``[EPOCH:]VERSION-RELEASE``, apk ``VERSION-rN``).
    """

    name: str
    version: str
    source_name: str
    source_version: str
    arch: str = ""
    kind: str = DPKG


@dataclass(frozen=True)
class GuestOS:
    """The guest's operating system from os-release, and its OSV ecosystem (None: no mapping)."""

    id: str
    version_id: str
    pretty_name: str = ""
    ecosystem: str | None = None
    note: str = ""


@dataclass
class Finding:
    """One known vulnerability of one installed binary package."""

    id: str
    aliases: list = field(default_factory=list)
    package: str = ""
    version: str = ""
    source_package: str = ""
    source_version: str = ""
    fixed_version: str | None = None
    severity: str = "unknown"
    summary: str = ""

    @property
    def state(self) -> str:
        return "not-fixed" if self.fixed_version is None else "fixed"

    def as_dict(self) -> dict:
        return {"id": self.id, "aliases": list(self.aliases), "package": self.package,
                "version": self.version, "source_package": self.source_package,
                "source_version": self.source_version, "fixed_version": self.fixed_version,
                "state": self.state, "severity": self.severity, "summary": self.summary}
