"""A stand-in for guestkit_worker.vulns.scanning until the database side lands (removed then).

Crude on purpose: natural-order version keys, ECOSYSTEM events introduced/fixed/last_affected.
"""

import glob
import json
import os
import re
import sys
import types
import zipfile


class ScanError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def _key(version):
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    parts = re.findall(r"\d+|[a-z]+", rest)
    return (int(epoch or 0), [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts])


def open_database(path, max_age_seconds):
    if not path:
        raise ScanError("VULN_DB_UNAVAILABLE", "no --vuln-db")
    records = []
    for zpath in glob.glob(os.path.join(path, "*", "all.zip")):
        with zipfile.ZipFile(zpath) as zf:
            records += [json.loads(zf.read(n)) for n in zf.namelist()]
    return records


def _affected(events, version):
    hit = False
    for ev in events:
        if "introduced" in ev:
            hit = ev["introduced"] == "0" or _key(version) >= _key(ev["introduced"])
        elif "fixed" in ev:
            hit = hit and _key(version) < _key(ev["fixed"])
        elif "last_affected" in ev:
            hit = hit and _key(version) <= _key(ev["last_affected"])
    return hit


def scan(database, guest_os, packages):
    found = []
    for pkg in packages:
        for rec in database:
            if rec.get("withdrawn"):
                continue
            for aff in rec["affected"]:
                key = (aff["package"]["ecosystem"], aff["package"]["name"])
                if key != (guest_os.ecosystem, pkg.source_name):
                    continue
                events = aff["ranges"][0]["events"]
                if _affected(events, pkg.source_version):
                    fixed = next((e["fixed"] for e in events if "fixed" in e), None)
                    found.append({"id": rec["id"], "aliases": rec.get("aliases", []),
                                  "package": pkg.name,
                                  "version": pkg.version, "source_package": pkg.source_name,
                                  "source_version": pkg.source_version, "fixed_version": fixed,
                                  "state": "fixed" if fixed else "not-fixed", "severity": "unknown",
                                  "summary": rec.get("summary", "")})
    return {"os": {"id": guest_os.id, "version_id": guest_os.version_id, "ecosystem": guest_os.ecosystem},
            "packages": {"count": len(packages)}, "database": {"records": len(database)},
            "vulnerabilities": found,
            "summary": {"total": len(found), "by_severity": {},
                        "fixable": sum(1 for f in found if f["fixed_version"])}}


def install():
    """Put the stand-in in place when the real module is absent."""
    try:
        import guestkit_worker.vulns.scanning  # noqa: F401
    except ImportError:
        module = types.ModuleType("guestkit_worker.vulns.scanning")
        module.ScanError, module.open_database, module.scan = ScanError, open_database, scan
        sys.modules["guestkit_worker.vulns.scanning"] = module
        import guestkit_worker.vulns as pkg
        pkg.scanning = module
