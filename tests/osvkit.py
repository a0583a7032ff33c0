"""OSV records and database directories written by tests: the real format, small data."""

import json
import os
import zipfile

CVSS_CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"        # 9.8
CVSS_HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"            # 7.5
CVSS_MEDIUM = "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N"          # 6.1
CVSS_LOW = "CVSS:3.1/AV:L/AC:H/PR:H/UI:N/S:U/C:L/I:N/A:N"             # 1.9
CVSS4_CRITICAL = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"  # 9.3


def affected(ecosystem, name, *ranges, versions=None, **extra):
    """One affected[] entry; each range is a list of events like {"introduced": "0"}."""
    entry = {"package": {"ecosystem": ecosystem, "name": name},
             "ranges": [{"type": "ECOSYSTEM", "events": list(events)} for events in ranges]}
    if versions is not None:
        entry["versions"] = list(versions)
    entry.update(extra)
    return entry


def record(rid, *entries, modified="2026-12-01T00:00:00Z", summary="", severity=None, **extra):
    doc = {"schema_version": "1.6.0", "id": rid, "modified": modified, "summary": summary or f"{rid} summary",
           "aliases": [f"CVE-{rid}"], "affected": list(entries)}
    if isinstance(severity, str):  # a CVSS vector
        severity = [{"type": "CVSS_V4" if severity.startswith("CVSS:4") else "CVSS_V3", "score": severity}]
    if severity:
        doc["severity"] = severity
    doc.update(extra)
    return doc


def write_zip(directory, ecosystem, records, extra_members=()):
    """DIR/<ecosystem>/all.zip with one ID.json member per record (as OSV publishes them) and
    any (name, bytes) members given."""
    folder = os.path.join(str(directory), ecosystem)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "all.zip")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for doc in records:
            archive.writestr(f"{doc['id']}.json", json.dumps(doc))
        for name, data in extra_members:
            archive.writestr(name, data)
    return path


def write_json(directory, doc, name=None):
    path = os.path.join(str(directory), name or f"{doc['id']}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(doc, fh)
    return path
