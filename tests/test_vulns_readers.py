"""The guest package readers (dpkg status, apk installed, the rpm database, os-release) on
bytes the tests write: the issue's cases and hostile input (huge fields, NUL bytes,
truncation, non-UTF-8), which give skipped entries with notes or one clear error."""

import os
import sqlite3
import struct
import subprocess

import pytest

from guestkit_worker.vulns import apk, dpkg, osrelease, rpmdb
from guestkit_worker.vulns.guestfiles import PackageDbError
from guestkit_worker.vulns.model import InstalledPackage

DPKG_STATUS = b"""Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 3.0.11-1~deb12u2
Description: SSL
 continuation line: Source: not-this

Package: libfoo1
Status: install ok installed
Architecture: amd64
Source: foo (1.2-3)
Version: 1.2-3+b1

Package: oldconf
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
"""


def test_dpkg_source_mapping_binnmu_and_config_files_only():
    packages, notes = dpkg.parse_status(DPKG_STATUS)
    assert notes == []
    assert packages == [
        InstalledPackage("libssl3", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2", "amd64", "dpkg"),
        InstalledPackage("libfoo1", "1.2-3+b1", "foo", "1.2-3", "amd64", "dpkg"),
        InstalledPackage("bash", "5.2.15-2+b2", "bash", "5.2.15-2+b2", "amd64", "dpkg"),
    ]


def test_dpkg_hostile_fields_are_skipped_with_notes():
    huge = b"Package: big\nStatus: install ok installed\nVersion: " + b"1" * (10 * 1024 * 1024) + b"\n\n"
    nul = b"Package: nul\0x\nStatus: install ok installed\nVersion: 1.0\n\n"
    latin = b"Package: caf\xe9\nStatus: install ok installed\nVersion: 1.0\n\n"
    desc = (b"Package: ok\nStatus: install ok installed\nVersion: 2.0\nDescription: "
            + b"x" * 10_000_000 + b"\n\n")
    packages, notes = dpkg.parse_status(huge + nul + latin + desc + b"Package: cut\nStat")
    assert [p.name for p in packages] == ["ok"]
    assert len(notes) == 3 and all("skipped" in n for n in notes), notes
    assert notes[0] == "dpkg status: package 'big' skipped (unreadable name, version or architecture)"


def test_dpkg_status_over_the_cap_is_one_clear_error(tmp_path):
    path = tmp_path / "status"
    path.write_bytes(b"\0" * 2048)
    assert dpkg.read_status(str(path)) == ([], [])
    with pytest.raises(PackageDbError, match="the dpkg status file is larger than 1024 bytes; not read"):
        dpkg.read_status(str(path), cap=1024)


def test_apk_origin_and_hostile_entries():
    data = (b"C:Q1abc=\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\no:openssl\n\n"
            b"P:musl\nV:1.2.4_git20230717-r4\nA:x86_64\n\n"
            b"P:bad\0name\nV:1\nA:x86_64\n\nP:toolong\nV:" + b"9" * 5000 + b"\n\nP:trunc\nV:1.0-r")
    packages, notes = apk.parse_installed(data)
    assert packages[:2] == [
        InstalledPackage("libcrypto3", "3.1.4-r5", "openssl", "3.1.4-r5", "x86_64", "apk"),
        InstalledPackage("musl", "1.2.4_git20230717-r4", "musl", "1.2.4_git20230717-r4", "x86_64", "apk")]
    assert [p.name for p in packages] == ["libcrypto3", "musl", "trunc"]
    assert len(notes) == 2


@pytest.mark.parametrize("text, ecosystem", [
    (b'ID=debian\nVERSION_ID="12"\n', "Debian:12"),
    (b'ID=ubuntu\nVERSION_ID="22.04"\nVERSION="22.04.4 LTS (Jammy Jellyfish)"\n', "Ubuntu:22.04:LTS"),
    (b'ID=ubuntu\nVERSION_ID="23.10"\nVERSION="23.10 (Mantic Minotaur)"\n', "Ubuntu:23.10"),
    (b"ID=alpine\nVERSION_ID=3.19.1\n", "Alpine:v3.19"),
    (b'ID="rocky"\nVERSION_ID="9.3"\n', "Rocky Linux:9"),
    (b'ID="almalinux"\nVERSION_ID="9.4"\n', "AlmaLinux:9"),
])
def test_os_release_ecosystems(text, ecosystem):
    guest = osrelease.guest_os(osrelease.parse(text))
    assert (guest.ecosystem, guest.note) == (ecosystem, "")


def test_os_release_without_ecosystem_has_a_note():
    guest = osrelease.guest_os(osrelease.parse(b'ID=arch\nPRETTY_NAME="Arch \\"Linux\\""\n\xff\xfe\0\n'))
    assert guest.ecosystem is None and guest.pretty_name == 'Arch "Linux"'
    assert guest.note.startswith("no OSV ecosystem is known for the distribution 'arch'")
    assert osrelease.read_os_release(None).note == "the guest has no os-release file; no package was matched"


def header(tags):
    """An rpm header blob of (tag, type, value) entries (strings and INT32 only)."""
    index, data = b"", b""
    for tag, kind, value in tags:
        if kind == 4:
            data += b"\0" * (-len(data) % 4)
        index += struct.pack(">iIiI", tag, kind, len(data), 1)
        data += struct.pack(">i", value) if kind == 4 else value.encode() + b"\0"
    return struct.pack(">II", len(tags), len(data)) + index + data


def test_rpm_header_fields_and_source_from_srpm():
    blob = header([(1000, 6, "openssl-libs"), (1001, 6, "3.0.7"), (1002, 6, "25.el9_3"), (1003, 4, 1),
                   (1022, 6, "x86_64"), (1044, 6, "openssl-3.0.7-25.el9_3.src.rpm")])
    assert rpmdb.package_from_header(rpmdb.parse_header(blob)) == InstalledPackage(
        "openssl-libs", "1:3.0.7-25.el9_3", "openssl", "1:3.0.7-25.el9_3", "x86_64", "rpm")


@pytest.mark.parametrize("blob, words", [
    (b"\0\0\0", "header of 3 bytes"),
    (struct.pack(">II", 0xFFFFFF, 10), "larger than the blob"),
    (header([(1000, 6, "name")])[:-3], "larger than the blob"),
    (struct.pack(">II", 1, 4) + struct.pack(">iIiI", 1000, 6, 0, 1) + b"abcd", "unterminated string"),
])
def test_rpm_damaged_headers(blob, words):
    with pytest.raises(rpmdb.HeaderError, match=words):
        rpmdb.parse_header(blob)


def test_rpm_sqlite_skips_damaged_headers_and_refuses_junk(tmp_path):
    path = str(tmp_path / "rpmdb.sqlite")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    good = header([(1000, 6, "bash"), (1001, 6, "5.1.8"), (1002, 6, "9.el9"), (1022, 6, "x86_64"),
                   (1044, 6, "bash-5.1.8-9.el9.src.rpm")])
    db.executemany("INSERT INTO Packages (blob) VALUES (?)", [(good,), (good[:20],), (b"\xff" * 64,)])
    db.commit()
    db.close()
    packages, notes = rpmdb.read_sqlite(path)
    assert [(p.name, p.version, p.source_name) for p in packages] == [("bash", "5.1.8-9.el9", "bash")]
    assert [n.split(" (")[0] for n in notes] == ["rpm database: header 2 skipped",
                                                 "rpm database: header 3 skipped"]
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"SQLite format 3\0" + os.urandom(5000))
    with pytest.raises(PackageDbError, match="the rpm sqlite database cannot be"):
        rpmdb.read_sqlite(str(junk))


@pytest.mark.integration
def test_rpm_berkeley_db_through_db_dump(tmp_path):
    """A real Berkeley DB hash file (db_load, as rpm's Packages: 4-byte keys, header values)."""
    good = header([(1000, 6, "bash"), (1001, 6, "4.2.46"), (1002, 6, "35.el7_9"), (1022, 6, "x86_64"),
                   (1044, 6, "bash-4.2.46-35.el7_9.src.rpm")])
    dump = ["VERSION=3", "format=bytevalue", "type=hash", "HEADER=END",
            " " + struct.pack("<I", 0).hex(), " " + struct.pack("<I", 1).hex(),
            " " + struct.pack("<I", 1).hex(), " " + good.hex(), "DATA=END", ""]
    path = tmp_path / "Packages"
    subprocess.run(["db_load", str(path)], input="\n".join(dump).encode(), check=True)
    packages, notes = rpmdb.read_bdb(str(path))
    assert [(p.name, p.version, p.source_version) for p in packages] == [("bash", "4.2.46-35.el7_9",
                                                                          "4.2.46-35.el7_9")]
    (tmp_path / "junk").write_bytes(b"x" * 8192)
    with pytest.raises(PackageDbError, match="db_dump cannot read the rpm Berkeley DB: .*Invalid argument"):
        rpmdb.read_bdb(str(tmp_path / "junk"))
