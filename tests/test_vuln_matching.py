"""Matching installed packages against OSV records (each rule of OSV's ECOSYSTEM ranges with its
own case), severities, the report of scan() and the database checks of open_database()."""

import pytest
from osvkit import (
    CVSS4_CRITICAL,
    CVSS_CRITICAL,
    CVSS_HIGH,
    CVSS_LOW,
    CVSS_MEDIUM,
    affected,
    record,
    write_zip,
)

from guestkit_worker.vulns import model, osvdb, scanning, severity
from guestkit_worker.vulns.model import GuestOS, InstalledPackage
from guestkit_worker.vulns.stats import STATS

DEB12 = GuestOS(id="debian", version_id="12", pretty_name="Debian GNU/Linux 12 (bookworm)",
                ecosystem="Debian:12")
NOW = osvdb.parse_timestamp("2026-12-02T00:00:00Z")


def _fix(version, intro="0"):
    return [{"introduced": intro}, {"fixed": version}]


def deb(name, version, source=None, source_version=None, arch="amd64"):
    return InstalledPackage(name, version, source or name, source_version or version, arch, model.DPKG)


@pytest.fixture(autouse=True)
def _fresh_cache():
    osvdb.clear_cache()
    yield
    osvdb.clear_cache()


@pytest.fixture
def debian_db(tmp_path):
    """One record per rule of the issue, in Debian:12, plus decoys in other releases."""
    records = [
        record("DSA-SRC", affected("Debian:12", "openssl", _fix("3.0.11-1~deb12u2")), severity=CVSS_CRITICAL),
        record("DSA-EPOCH", affected("Debian:12", "epochpkg", _fix("2.5-1")), severity=CVSS_HIGH),
        record("DSA-TILDE", affected("Debian:12", "tildepkg", _fix("1.0-1")), severity=CVSS_MEDIUM),
        record("DSA-DEBU", affected("Debian:12", "glibc", _fix("2.36-9+deb12u10")), severity=CVSS_LOW),
        record("DSA-LAST", affected("Debian:12", "lastpkg",
                                    [{"introduced": "0"}, {"last_affected": "1.5-1"}])),
        record("DSA-LATER", affected("Debian:12", "laterpkg", _fix("2.3-1", intro="2.0-1"))),
        record("DSA-TWO", affected("Debian:12", "twopkg", _fix("1.0-1"), _fix("2.3-1", intro="2.0-1"))),
        record("DSA-LIMIT", affected("Debian:12", "limitpkg", [{"introduced": "0"}, {"limit": "2.0-1"}])),
        record("DSA-OLD", affected("Debian:11", "oldrel", _fix("9.9-1"))),
        record("DSA-WD", affected("Debian:12", "withdrawn", _fix("9.9-1")), withdrawn="2026-11-01T00:00:00Z"),
        record("DSA-OPEN", affected("Debian:12", "openpkg", [{"introduced": "0"}]),
               database_specific={"severity": "Important"}),
        record("DSA-LIST", affected("Debian:12", "listpkg", versions=["1.2-1", "1.3-1"])),
        record("DSA-MULTI", affected("Debian:12", "multipkg", _fix("1.0-1")),
               affected("Debian:12", "multipkg", _fix("1.1-1"))),
        record("DSA-URG", affected("Debian:12", "urgpkg", _fix("5-1"),
                                   ecosystem_specific={"urgency": "unimportant"})),
        record("DSA-V4", affected("Debian:12", "v4pkg", _fix("5-1")), severity=CVSS4_CRITICAL),
        record("DSA-BADVEC", affected("Debian:12", "badvec", _fix("5-1")),
               severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/garbage"}],
               database_specific={"severity": "moderate"}),
    ]
    write_zip(tmp_path, "Debian", records)
    return osvdb.load_database(str(tmp_path))


def _ids(report):
    return sorted((v["id"], v["package"]) for v in report["vulnerabilities"])


def _one(db, package):
    report = scanning.scan(db, DEB12, [package], now=NOW)
    return report["vulnerabilities"]


def test_binary_matched_through_its_source(debian_db):
    found = _one(debian_db, deb("libssl3", "3.0.11-1~deb12u1", source="openssl"))
    assert found == [{"id": "DSA-SRC", "aliases": ["CVE-DSA-SRC"], "package": "libssl3",
                      "version": "3.0.11-1~deb12u1", "source_package": "openssl",
                      "source_version": "3.0.11-1~deb12u1", "fixed_version": "3.0.11-1~deb12u2",
                      "state": "fixed", "severity": "critical", "summary": "DSA-SRC summary"}]
    # the binary's own name is no source package of any record
    assert _one(debian_db, deb("openssl-bin", "1.0-1", source="other")) == []


def test_binnmu_compares_the_source_version(debian_db):
    binnmu = deb("libssl3", "3.0.11-1~deb12u2+b1", source="openssl", source_version="3.0.11-1~deb12u2")
    assert _one(debian_db, binnmu) == []
    binnmu_old = deb("libssl3", "3.0.11-1~deb12u1+b1", source="openssl", source_version="3.0.11-1~deb12u1")
    assert [v["id"] for v in _one(debian_db, binnmu_old)] == ["DSA-SRC"]


def test_epoch_tilde_and_deb12u_order(debian_db):
    assert _one(debian_db, deb("epochpkg", "1:2.0-1")) == []          # 1:2.0 is after 2.5
    assert len(_one(debian_db, deb("epochpkg", "2.4-1"))) == 1
    assert len(_one(debian_db, deb("tildepkg", "1.0~rc1-1"))) == 1     # ~rc1 is before the release
    assert _one(debian_db, deb("tildepkg", "1.0-1")) == []
    found = _one(debian_db, deb("libc6", "2.36-9+deb12u4", source="glibc"))
    assert [(v["id"], v["fixed_version"]) for v in found] == [("DSA-DEBU", "2.36-9+deb12u10")]
    assert _one(debian_db, deb("libc6", "2.36-9+deb12u10", source="glibc")) == []


def test_last_affected(debian_db):
    found = _one(debian_db, deb("lastpkg", "1.5-1"))
    assert [(v["id"], v["fixed_version"], v["state"]) for v in found] == [("DSA-LAST", None, "not-fixed")]
    assert _one(debian_db, deb("lastpkg", "1.5-2")) == []


def test_later_introduced_and_second_range(debian_db):
    assert _one(debian_db, deb("laterpkg", "1.9-1")) == []
    assert [v["fixed_version"] for v in _one(debian_db, deb("laterpkg", "2.1-1"))] == ["2.3-1"]
    assert [v["fixed_version"] for v in _one(debian_db, deb("twopkg", "0.9-1"))] == ["1.0-1"]
    assert _one(debian_db, deb("twopkg", "1.5-1")) == []
    assert [v["fixed_version"] for v in _one(debian_db, deb("twopkg", "2.2-1"))] == ["2.3-1"]
    assert _one(debian_db, deb("twopkg", "2.3-1")) == []


def test_limit(debian_db):
    assert len(_one(debian_db, deb("limitpkg", "1.9-1"))) == 1
    assert _one(debian_db, deb("limitpkg", "2.0-1")) == []


def test_other_release_withdrawn_and_unfixed(debian_db):
    assert _one(debian_db, deb("oldrel", "1.0-1")) == []
    assert _one(debian_db, deb("withdrawn", "1.0-1")) == []
    found = _one(debian_db, deb("openpkg", "99-1"))
    assert [(v["fixed_version"], v["state"], v["severity"]) for v in found] == [(None, "not-fixed", "high")]


def test_versions_list_and_one_finding_per_record(debian_db):
    assert len(_one(debian_db, deb("listpkg", "1.3-1"))) == 1
    assert _one(debian_db, deb("listpkg", "1.4-1")) == []
    found = _one(debian_db, deb("multipkg", "0.5-1"))
    assert [(v["id"], v["fixed_version"]) for v in found] == [("DSA-MULTI", "1.0-1")]
    assert [v["fixed_version"] for v in _one(debian_db, deb("multipkg", "1.0-1"))] == ["1.1-1"]


def test_severity_sources(debian_db):
    rate = {v["id"]: v["severity"] for v in scanning.scan(debian_db, DEB12, [
        deb("urgpkg", "1-1"), deb("v4pkg", "1-1"), deb("badvec", "1-1"), deb("tildepkg", "0.1-1"),
        deb("libc6", "2.36-9", source="glibc"), deb("laterpkg", "2.0-1")], now=NOW)["vulnerabilities"]}
    assert rate == {"DSA-URG": "low", "DSA-V4": "critical", "DSA-BADVEC": "medium", "DSA-TILDE": "medium",
                    "DSA-DEBU": "low", "DSA-LATER": "unknown"}
    assert severity.rating_from_score(0.0) == "unknown"
    assert [severity.rating_from_score(s) for s in (9.0, 8.9, 7.0, 6.9, 4.0, 3.9, 0.1)] == [
        "critical", "high", "high", "medium", "medium", "low", "low"]


def test_report_shape_order_and_summary(debian_db):
    packages = [deb("libssl3", "3.0.11-1~deb12u1", source="openssl"),
                deb("openssl", "3.0.11-1~deb12u1"), deb("openpkg", "1-1"), deb("libc6", "2.36-9+deb12u4",
                                                                               source="glibc"),
                deb("bash", "5.2.15-2+b2")]
    before = STATS.snapshot()
    report = scanning.scan(debian_db, DEB12, packages, now=NOW)
    assert report["os"] == {"id": "debian", "version_id": "12", "pretty_name": DEB12.pretty_name,
                            "ecosystem": "Debian:12"}
    assert report["packages"] == {"count": 5, "unparsable_versions": 0}
    assert report["database"] == {"records": 15, "ecosystem_records": 14,
                                  "newest_modified": "2026-12-01T00:00:00Z", "age_seconds": 86400,
                                  "skipped": 0}
    assert [(v["severity"], v["id"], v["package"]) for v in report["vulnerabilities"]] == [
        ("critical", "DSA-SRC", "libssl3"), ("critical", "DSA-SRC", "openssl"),
        ("high", "DSA-OPEN", "openpkg"), ("low", "DSA-DEBU", "libc6")]
    assert report["summary"] == {"total": 4, "fixable": 3, "by_severity": {
        "critical": 2, "high": 1, "medium": 0, "low": 1, "unknown": 0}}
    assert report["notes"] == [] and "note" not in report
    after = STATS.snapshot()
    assert after["scans"] == before["scans"] + 1
    assert after["findings"]["critical"] == before["findings"]["critical"] + 2


def test_no_ecosystem_gives_an_explicit_note(debian_db):
    guest = GuestOS(id="gentoo", version_id="2.15", ecosystem=None)
    report = scanning.scan(debian_db, guest, [deb("openssl", "1.0-1")], now=NOW)
    assert report["vulnerabilities"] == [] and report["summary"]["total"] == 0
    assert report["notes"] == ["no OSV ecosystem is known for gentoo 2.15: no vulnerabilities were looked up"]
    assert report["os"]["ecosystem"] is None and "note" not in report


def test_ecosystem_missing_from_the_database_gives_a_note(debian_db):
    guest = GuestOS(id="debian", version_id="13", ecosystem="Debian:13")
    report = scanning.scan(debian_db, guest, [deb("openssl", "1.0-1")], now=NOW)
    assert report["vulnerabilities"] == [] and report["database"]["ecosystem_records"] == 0
    [note] = report["notes"]
    assert "holds no records for Debian:13: add OSV's Debian/all.zip" in note


def test_unparsable_installed_version_is_counted(debian_db):
    report = scanning.scan(debian_db, DEB12, [deb("listpkg", "not a version!")], now=NOW)
    assert report["packages"]["unparsable_versions"] == 1 and report["vulnerabilities"] == []


def test_rpm_and_apk_ecosystems(tmp_path):
    write_zip(tmp_path, "Rocky Linux", [
        record("RLSA-1", affected("Rocky Linux:9", "openssl", _fix("1:3.0.7-25.el9_3"))),
        record("RLSA-2", affected("Rocky Linux:9", "vim", _fix("2:9.0.2081-1.el9"))),
        record("RLSA-3", affected("Rocky Linux:8", "openssl", _fix("1:9.9-1.el8")))])
    write_zip(tmp_path, "Alpine", [
        record("ALPINE-1", affected("Alpine:v3.19", "openssl", _fix("3.1.4-r5"))),
        record("ALPINE-2", affected("Alpine:v3.19", "busybox", _fix("1.36.1-r16")))])
    db = osvdb.load_database(str(tmp_path))
    rocky = GuestOS(id="rocky", version_id="9.3", ecosystem="Rocky Linux:9")
    rpms = [InstalledPackage("openssl-libs", "1:3.0.7-24.el9", "openssl", "1:3.0.7-24.el9", "x86_64",
                             model.RPM),
            InstalledPackage("vim-minimal", "2:9.0.2081-1.el9", "vim", "2:9.0.2081-1.el9", "x86_64",
                             model.RPM)]
    found = scanning.scan(db, rocky, rpms, now=NOW)["vulnerabilities"]
    assert [(v["id"], v["package"], v["fixed_version"]) for v in found] == [
        ("RLSA-1", "openssl-libs", "1:3.0.7-25.el9_3")]
    alpine = GuestOS(id="alpine", version_id="3.19.1", ecosystem="Alpine:v3.19")
    apks = [InstalledPackage("libssl3", "3.1.4-r5", "openssl", "3.1.4-r5", "x86_64", model.APK),
            InstalledPackage("busybox", "1.36.1_rc1-r0", "busybox", "1.36.1_rc1-r0", "x86_64", model.APK)]
    found = scanning.scan(db, alpine, apks, now=NOW)["vulnerabilities"]
    assert [(v["id"], v["package"]) for v in found] == [("ALPINE-2", "busybox")]


def test_open_database_refuses_a_stale_one(tmp_path):
    write_zip(tmp_path, "Debian", [record("DSA-1", affected("Debian:12", "a", _fix("1")),
                                          modified="2026-11-20T00:00:00Z")])
    now = osvdb.parse_timestamp("2026-12-01T06:00:00Z")
    with pytest.raises(osvdb.ScanError) as err:
        scanning.open_database(str(tmp_path), 7 * 86400, now=now)
    assert err.value.code == "VULN_DB_STALE"
    assert err.value.message == (
        f"the vulnerability database {tmp_path} is 11d 6h old (newest record modified 2026-11-20T00:00:00Z), "
        "past --vuln-db-max-age 7d 0h; refresh its all.zip files, or raise --vuln-db-max-age (0 = no limit)")
    assert scanning.open_database(str(tmp_path), 0, now=now).records == 1
    assert scanning.open_database(str(tmp_path), 12 * 86400, now=now).records == 1
    assert STATS.snapshot()["database"].path == str(tmp_path)


def test_open_database_unavailable():
    with pytest.raises(osvdb.ScanError) as err:
        scanning.open_database(None, 0)
    assert err.value.code == "VULN_DB_UNAVAILABLE"
