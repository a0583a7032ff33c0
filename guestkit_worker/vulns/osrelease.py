"""The guest's operating system from os-release, and the OSV ecosystem its advisories use.

Ecosystems: ``Debian:12``, ``Ubuntu:22.04:LTS`` (``Ubuntu:23.10`` for an interim release),
``Alpine:v3.19``, ``Rocky Linux:9``, ``AlmaLinux:9``.  A distribution OSV has no ecosystem
for here (or an os-release without the version it needs) gets ``ecosystem=None`` and a note
saying why, so a scan never reports an empty list as if nothing were vulnerable.
"""

from __future__ import annotations

import re

from .guestfiles import MAX_OS_RELEASE_BYTES, read_capped
from .model import GuestOS

PATHS = ("/etc/os-release", "/usr/lib/os-release")
KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*")
MAX_VALUE = 512


def _unquote(value: str) -> str:
    """A shell-style os-release value without its quotes and backslash escapes."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        quote, value = value[0], value[1:-1]
        if quote == '"':
            value = re.sub(r"\\([\\$\"`])", r"\1", value)
    return value


def parse(data: bytes) -> dict[str, str]:
    """os-release's KEY=value pairs (comments, malformed lines and overlong values dropped)."""
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and KEY_RE.fullmatch(key) and len(value) <= MAX_VALUE and "\0" not in value:
            out[key] = _unquote(value)
    return out


def _major_minor(version_id: str) -> tuple[str, str] | None:
    m = re.match(r"(\d+)(?:\.(\d+))?", version_id)
    return (m.group(1), m.group(2) or "") if m else None


def _debian(fields):
    mm = _major_minor(fields.get("VERSION_ID", ""))
    return (f"Debian:{mm[0]}", "") if mm else (None, "Debian without VERSION_ID (testing or "
                                                     "unstable): OSV has no ecosystem for it")


def _ubuntu(fields):
    mm = _major_minor(fields.get("VERSION_ID", ""))
    if not mm or not mm[1]:
        return None, "Ubuntu without a VERSION_ID like 22.04: no OSV ecosystem"
    lts = "LTS" in fields.get("VERSION", "").split() or (mm[1] == "04" and int(mm[0]) % 2 == 0)
    return f"Ubuntu:{mm[0]}.{mm[1]}" + (":LTS" if lts else ""), ""


def _alpine(fields):
    mm = _major_minor(fields.get("VERSION_ID", ""))
    if not mm or not mm[1]:
        return None, "Alpine without a VERSION_ID like 3.19.1: no OSV ecosystem"
    return f"Alpine:v{mm[0]}.{mm[1]}", ""


def _major_only(prefix):
    def mapping(fields):
        mm = _major_minor(fields.get("VERSION_ID", ""))
        if not mm:
            return None, f"{prefix} without VERSION_ID: no OSV ecosystem"
        return f"{prefix}:{mm[0]}", ""
    return mapping


MAPPINGS = {"debian": _debian, "ubuntu": _ubuntu, "alpine": _alpine,
            "rocky": _major_only("Rocky Linux"), "almalinux": _major_only("AlmaLinux")}


def guest_os(fields: dict[str, str]) -> GuestOS:
    """The GuestOS of parsed os-release fields, with its OSV ecosystem or a note."""
    os_id = fields.get("ID", "").strip().lower()
    mapping = MAPPINGS.get(os_id)
    if mapping is None:
        shown = os_id or "unknown"
        ecosystem, note = None, (f"no OSV ecosystem is known for the distribution {shown!r} "
                                 f"(supported: {', '.join(sorted(MAPPINGS))}); no package was matched")
    else:
        ecosystem, note = mapping(fields)
        if ecosystem is None:
            note += "; no package was matched"
    return GuestOS(id=os_id, version_id=fields.get("VERSION_ID", ""),
                   pretty_name=fields.get("PRETTY_NAME", ""), ecosystem=ecosystem, note=note)


def read_os_release(path: str | None) -> GuestOS:
    """guest_os of the os-release file at path; None or an unreadable file gives a note."""
    if path is None:
        return GuestOS(id="", version_id="", ecosystem=None,
                       note="the guest has no os-release file; no package was matched")
    return guest_os(parse(read_capped(path, MAX_OS_RELEASE_BYTES, "os-release")))
