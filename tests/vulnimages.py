"""Disk images and an OSV database for the vulnerability-scan tests, from files the tests write.

``build_scan_images(directory)`` makes these guests the way :mod:`diskimage` does (a root
tree, mkfs.ext4 -d, an MBR raw image and its qcow2 copy):

* ``debian``: Debian 12 with a dpkg status holding a binary whose source differs (libssl3 from
  openssl), a binNMU (``Source: foo (1.2-3)``, ``Version: 1.2-3+b1``), a package with only its
  configuration files left, an epoch and ``+deb12u4`` (before ``+deb12u10``);
* ``rpm``: Rocky Linux 9 with a real ``rpmdb.sqlite`` made by ``rpm --initdb`` and
  ``rpm -i --justdb`` of two tiny packages built by ``rpmbuild`` (openssl-libs from the openssl
  source RPM, epoch 1; bash);
* ``rpm8``: Rocky Linux 8 with the same packages in a Berkeley DB ``Packages`` (db_load);
* ``apk``: Alpine 3.19 with ``/lib/apk/db/installed`` (libcrypto3 with origin openssl; musl);
* ``hostile``: Debian 12 whose dpkg status has a 10 MB version, NUL bytes and non-UTF-8 next to
  one good package;
* ``badrpm``: Rocky Linux 9 whose ``rpmdb.sqlite`` is not an SQLite database.

``write_osv_database(directory)`` writes ``Debian/all.zip``, ``Rocky Linux/all.zip`` ...
(OSV's layout) with records that match, records that must not (another release's ecosystem, a
withdrawn record, a fix older than the installed version) and returns the expected findings.
"""

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import zipfile
from datetime import datetime, timezone

from diskimage import image_from_root, make_root_tree
from diskimage import write_file as _write

DEBIAN_STATUS = """Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 3.0.11-1~deb12u2
Description: Secure Sockets Layer toolkit - shared libraries

Package: libfoo1
Status: install ok installed
Architecture: amd64
Source: foo (1.2-3)
Version: 1.2-3+b1
Description: a binNMU

Package: oldconf
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Description: removed, configuration files left

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
Description: GNU Bourne Again SHell

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library

Package: openssh-server
Status: install ok installed
Architecture: amd64
Source: openssh
Version: 1:9.2p1-2+deb12u2
Description: secure shell server

"""

APK_INSTALLED = """C:Q1abcdefghijklmnopqrstuvwxyz0=
P:libcrypto3
V:3.1.4-r5
A:x86_64
o:openssl

P:musl
V:1.2.4_git20230717-r4
A:x86_64
o:musl

"""

RPM_SPECS = {
    "openssl": ("openssl", "3.0.7", "24.el9", 1, "libs"),
    "bash": ("bash", "5.1.8", "6.el9", 0, None),
}

CVSS_CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8
CVSS_MEDIUM = "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:L/A:N"  # 4.2


def _os_release(root, text):
    os.unlink(os.path.join(root, "etc/debian_version"))
    os.unlink(os.path.join(root, "var/lib/dpkg/status"))
    _write(root, "etc/os-release", text)


def _build_rpms(workdir):
    """Tiny binary RPMs (no files) built by rpmbuild; their paths."""
    top = os.path.join(workdir, "rpmbuild")
    out = []
    for stem, (name, version, release, epoch, sub) in RPM_SPECS.items():
        spec = [f"Name: {name}", f"Version: {version}", f"Release: {release}", "Summary: test",
                "License: MIT", "BuildArch: x86_64"] + ([f"Epoch: {epoch}"] if epoch else [])
        spec += ["%description", "test package"]
        spec += ([f"%package {sub}", "Summary: test", f"%description {sub}", "test", f"%files {sub}"]
                 if sub else ["%files"])
        path = _write(workdir, f"{stem}.spec", "\n".join(spec) + "\n")
        subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}",
                        "--define", "_build_id_links none", path], check=True, capture_output=True)
    for dirpath, _, names in os.walk(os.path.join(top, "RPMS")):
        out += [os.path.join(dirpath, n) for n in names if n.endswith(".rpm")]
    return sorted(out)


def _rpmdb(dbpath, rpms):
    """A real rpmdb.sqlite in dbpath holding rpms (rpm --initdb, rpm -i --justdb)."""
    os.makedirs(dbpath)
    subprocess.run(["rpm", "--dbpath", dbpath, "--initdb"], check=True, capture_output=True)
    subprocess.run(["rpm", "--dbpath", dbpath, "-i", "--justdb", "--nodeps", "--ignorearch", "--ignoreos",
                    *rpms], check=True, capture_output=True)
    for leftover in (".rpm.lock", "rpmdb.sqlite-shm"):
        if os.path.exists(os.path.join(dbpath, leftover)):
            os.unlink(os.path.join(dbpath, leftover))


def _rpm_root(directory, rpms):
    root = make_root_tree(os.path.join(directory, "rpm-root"))
    _os_release(root, 'NAME="Rocky Linux"\nVERSION="9.3 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel fedora"\n'
                      'VERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n')
    _rpmdb(os.path.join(root, "var/lib/rpm"), rpms)
    return root


def _rpm8_root(directory, rpms):
    """Rocky Linux 8: the same packages in a Berkeley DB hash ``Packages`` (as rpm < 4.16 keeps
    them: 4-byte record number keys, header blob values), loaded by db_load from the headers
    rpm wrote into a scratch sqlite database."""
    root = make_root_tree(os.path.join(directory, "rpm8-root"))
    _os_release(root, 'NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="8.9"\n'
                      'PRETTY_NAME="Rocky Linux 8.9 (Green Obsidian)"\n')
    scratch = os.path.join(directory, "rpm8-sqlite")
    _rpmdb(scratch, rpms)
    db = sqlite3.connect(os.path.join(scratch, "rpmdb.sqlite"))
    lines = ["VERSION=3", "format=bytevalue", "type=hash", "HEADER=END",
             " " + struct.pack("<I", 0).hex(), " " + struct.pack("<I", 2).hex()]
    for hnum, blob in db.execute("SELECT hnum, blob FROM Packages"):
        lines += [" " + struct.pack("<I", hnum).hex(), " " + bytes(blob).hex()]
    db.close()
    os.makedirs(os.path.join(root, "var/lib/rpm"))
    subprocess.run(["db_load", os.path.join(root, "var/lib/rpm/Packages")],
                   input="\n".join(lines + ["DATA=END", ""]).encode(), check=True, capture_output=True)
    shutil.rmtree(scratch)
    return root


def _bad_rpm_root(directory):
    root = make_root_tree(os.path.join(directory, "badrpm-root"))
    _os_release(root, 'NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="9.3"\n')
    _write(root, "var/lib/rpm/rpmdb.sqlite", b"SQLite format 3\0" + bytes(range(256)) * 64)
    return root


def _apk_root(directory):
    root = make_root_tree(os.path.join(directory, "apk-root"))
    _os_release(root, 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.1\n'
                      'PRETTY_NAME="Alpine Linux v3.19"\n')
    _write(root, "etc/alpine-release", "3.19.1\n")
    _write(root, "lib/apk/db/installed", APK_INSTALLED)
    return root


def _debian_root(directory, stem, status):
    root = make_root_tree(os.path.join(directory, f"{stem}-root"))
    _write(root, "var/lib/dpkg/status", status)
    return root


def hostile_status():
    """A dpkg status with a 10 MB version field, NUL bytes and non-UTF-8 around one good package."""
    return (b"Package: huge\nStatus: install ok installed\nVersion: " + b"9" * (10 * 1024 * 1024)
            + b"\n\nPackage: nul\0bytes\nStatus: install ok installed\nVersion: 1.0\n\n"
            + b"Package: caf\xe9\nStatus: install ok installed\nVersion: 1\xff\n\n"
            + b"Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\n"
            + b"Package: trunc")


def build_scan_images(directory):
    """The five guests (see the module docstring): {name: {"raw": path, "qcow2": path}}."""
    directory = os.fspath(directory)
    roots = {"debian": _debian_root(directory, "debian", DEBIAN_STATUS),
             "hostile": _debian_root(directory, "hostile", hostile_status()),
             "apk": _apk_root(directory), "badrpm": _bad_rpm_root(directory)}
    rpms = _build_rpms(directory)
    roots.update(rpm=_rpm_root(directory, rpms), rpm8=_rpm8_root(directory, rpms))
    images = {}
    for name, root in roots.items():
        raw, qcow2 = image_from_root(root, directory, f"scan-{name}")
        images[name] = {"raw": raw, "qcow2": qcow2}
        shutil.rmtree(root)
    return images


def _record(rid, ecosystem, package, events, **extra):
    modified = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {"schema_version": "1.6.0", "id": rid, "modified": modified, "published": modified,
           "summary": f"{rid} in {package}", "aliases": [rid.replace("TEST", "CVE")],
           "affected": [{"package": {"ecosystem": ecosystem, "name": package},
                         "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}
    doc.update(extra)
    return doc


OSV_RECORDS = [
    # Debian 12
    _record("TEST-2026-0001", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.13-1~deb12u1"}],
            severity=[{"type": "CVSS_V3", "score": CVSS_CRITICAL}]),
    _record("TEST-2026-0002", "Debian:12", "foo", [{"introduced": "0"}, {"last_affected": "1.2-3"}]),
    _record("TEST-2026-0003", "Debian:12", "oldconf", [{"introduced": "0"}]),
    _record("TEST-2026-0004", "Debian:12", "bash", [{"introduced": "0"}]),
    _record("TEST-2026-0005", "Debian:12", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u10"}],
            severity=[{"type": "CVSS_V3", "score": CVSS_MEDIUM}]),
    _record("TEST-2026-0006", "Debian:12", "openssh", [{"introduced": "0"}, {"fixed": "1:9.2p1-2+deb12u3"}]),
    _record("TEST-2026-0007", "Debian:12", "openssh", [{"introduced": "0"}, {"fixed": "9.9p1-1"}]),
    _record("TEST-2026-0008", "Debian:11", "openssl", [{"introduced": "0"}, {"fixed": "9.9-1"}]),
    _record("TEST-2026-0009", "Debian:12", "bash", [{"introduced": "0"}], withdrawn="2026-11-01T00:00:00Z"),
    _record("TEST-2026-0010", "Debian:12", "libssl3", [{"introduced": "0"}]),  # a binary name
    # Rocky Linux 9
    _record("TEST-2026-0101", "Rocky Linux:9", "openssl",
            [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9_3"}]),
    _record("TEST-2026-0102", "Rocky Linux:9", "bash", [{"introduced": "0"}, {"fixed": "5.1.8-6.el9"}]),
    _record("TEST-2026-0104", "Rocky Linux:8", "openssl", [{"introduced": "0"}, {"fixed": "1:3.0.7-30.el8"}]),
    _record("TEST-2026-0103", "AlmaLinux:9", "openssl", [{"introduced": "0"}, {"fixed": "1:9.9.9-1.el9"}]),
    # Alpine 3.19
    _record("TEST-2026-0201", "Alpine:v3.19", "openssl", [{"introduced": "0"}, {"fixed": "3.1.4-r6"}]),
    _record("TEST-2026-0202", "Alpine:v3.18", "openssl", [{"introduced": "0"}, {"fixed": "3.1.9-r0"}]),
    _record("TEST-2026-0203", "Alpine:v3.19", "musl", [{"introduced": "0"},
                                                       {"fixed": "1.2.4_git20230717-r4"}]),
]

#: (id, binary package, version, source package, source version, fixed_version, state)
EXPECTED_FINDINGS = {
    "debian": [
        ("TEST-2026-0001", "libssl3", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2",
         "3.0.13-1~deb12u1", "fixed"),
        ("TEST-2026-0002", "libfoo1", "1.2-3+b1", "foo", "1.2-3", None, "not-fixed"),
        ("TEST-2026-0004", "bash", "5.2.15-2+b2", "bash", "5.2.15-2+b2", None, "not-fixed"),
        ("TEST-2026-0005", "libc6", "2.36-9+deb12u4", "glibc", "2.36-9+deb12u4", "2.36-9+deb12u10", "fixed"),
        ("TEST-2026-0006", "openssh-server", "1:9.2p1-2+deb12u2", "openssh", "1:9.2p1-2+deb12u2",
         "1:9.2p1-2+deb12u3", "fixed"),
    ],
    "rpm": [
        ("TEST-2026-0101", "openssl-libs", "1:3.0.7-24.el9", "openssl", "1:3.0.7-24.el9",
         "1:3.0.7-25.el9_3", "fixed"),
    ],
    "rpm8": [
        ("TEST-2026-0104", "openssl-libs", "1:3.0.7-24.el9", "openssl", "1:3.0.7-24.el9",
         "1:3.0.7-30.el8", "fixed"),
    ],
    "apk": [
        ("TEST-2026-0201", "libcrypto3", "3.1.4-r5", "openssl", "3.1.4-r5", "3.1.4-r6", "fixed"),
    ],
}


def write_osv_database(directory):
    """OSV's layout in directory: ``<ecosystem base>/all.zip`` holding one JSON file per record."""
    directory = os.fspath(directory)
    by_base = {}
    for record in OSV_RECORDS:
        base = record["affected"][0]["package"]["ecosystem"].split(":")[0]
        by_base.setdefault(base, []).append(record)
    for base, records in by_base.items():
        os.makedirs(os.path.join(directory, base), exist_ok=True)
        with zipfile.ZipFile(os.path.join(directory, base, "all.zip"), "w") as zf:
            for record in records:
                zf.writestr(f"{record['id']}.json", json.dumps(record))
    return directory
