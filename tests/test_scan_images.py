"""guestkit.scan and guestkit.inspect with ``options.vulnerabilities`` on real disk images built
from files the tests write (tests/vulnimages.py): Debian, Rocky 9 (rpmdb.sqlite), Rocky 8
(Berkeley DB Packages) and Alpine guests, a Debian guest with a hostile dpkg status and a Rocky
guest whose rpm database is junk, matched against an OSV database in OSV's own layout.  One
real worker run (``run --once --vuln-db``) of seven image jobs, one appliance launch each, is
shared by the module's tests.
"""

import json
import os

import pytest
from conftest import Dirs, cli, make_job, worker_env, write_job
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from diskimage import GUESTFS_ENV, require_tool
from metricskit import parse, value
from vulnimages import EXPECTED_FINDINGS, build_scan_images, write_osv_database

from guestkit_worker.engines.outputs import OWNER_XATTR

pytestmark = [pytest.mark.integration, pytest.mark.engine, pytest.mark.timeout(1800)]

_CACHE = {}


@pytest.fixture(scope="session")
def scan_images(tmp_path_factory):
    """The four scan guests and the OSV database, built once per session."""
    require_tool("sfdisk", "mkfs.ext4", "qemu-img", "rpmbuild", "rpm")
    if "images" not in _CACHE:
        base = tmp_path_factory.mktemp("scanimages")
        _CACHE["images"] = dict(build_scan_images(base), osv=write_osv_database(base / "osv"))
    return _CACHE["images"]


def scan_job(job_id, image, **data):
    return make_job(job_id, "guestkit.scan", dict(data, image=image), payload_type="guestkit.scan.v1",
                    execution={"timeout_seconds": 900})


@pytest.fixture(scope="module")
def runs(scan_images, tmp_path_factory):
    """One real worker run (--once, two at a time, --vuln-db) of every job: a scan of each image
    (the Debian one with an output and an SBOM destination), an inspection of the Debian image
    with vulnerabilities, and an echo job queued after them all.  {name: (result, report)}."""
    require_tool("guestfs")
    base = tmp_path_factory.mktemp("scanruns")
    dirs = Dirs(base)
    textdir = base / "textfile"
    textdir.mkdir()
    qcow2 = {name: {"path": scan_images[name]["qcow2"], "format": "qcow2"} for name in scan_images
             if name != "osv"}
    jobs = {
        "debian": scan_job("scan-debian-0001", qcow2["debian"],
                           output={"format": "json", "destination": str(base / "deb-scan.json")},
                           sbom={"format": "cyclonedx", "destination": str(base / "deb.cdx.json")}),
        "inspect": make_job("scan-inspect-0001", "guestkit.inspect", {
            "image": {"path": scan_images["debian"]["raw"], "format": "raw"},
            "options": {"include_packages": True, "vulnerabilities": True}},
            execution={"timeout_seconds": 900}),
        "rpm": scan_job("scan-rpm-0001", qcow2["rpm"], sbom={"format": "cyclonedx"}),
        "rpm8": scan_job("scan-rpm8-0001", qcow2["rpm8"]),
        "apk": scan_job("scan-apk-0001", qcow2["apk"], sbom={"format": "cyclonedx"}),
        "hostile": scan_job("scan-hostile-0001", qcow2["hostile"]),
        "badrpm": scan_job("scan-badrpm-0001", qcow2["badrpm"]),
        "echo": make_job("scan-zz-echo-0001", "system.echo", {"after": "the scans"}),
    }
    for doc in jobs.values():
        write_job(dirs.jobs, doc)
    proc = cli("run", "--once", "--max-concurrent", "2", "--vuln-db", scan_images["osv"],
               "--textfile-dir", str(textdir), *dirs.args(), env=worker_env(**GUESTFS_ENV), timeout=1700)
    out = {"_proc": proc, "_dirs": dirs, "_metrics": parse((textdir / "guestkit_worker.prom").read_text())}
    for name, doc in jobs.items():
        result = dirs.result(doc["job_id"])
        primary = (result.get("outputs") or {}).get("primary")
        report = None
        if result["status"] == "completed" and primary:
            with open(primary, encoding="utf-8") as fh:
                report = json.load(fh)
        out[name] = (result, report)
    return out


def ok(runs, name):
    result, report = runs[name]
    assert report is not None, f"{name}: {result!r}"
    return result, report


def progress(runs, job_id):
    """The progress events of job_id (the results directory's JOB_ID-progress.jsonl)."""
    path = os.path.join(runs["_dirs"].results, f"{job_id}-progress.jsonl")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def findings(report):
    return sorted((f["id"], f["package"], f["version"], f["source_package"], f["source_version"],
                   f["fixed_version"], f["state"]) for f in report["vulnerabilities"])


@pytest.mark.parametrize("name", ["debian", "rpm", "rpm8", "apk"])
def test_scan_finds_exactly_the_expected_vulnerabilities(runs, name):
    result, report = ok(runs, name)
    assert findings(report) == sorted(EXPECTED_FINDINGS[name])
    assert result["data"]["summary"] == report["summary"]
    assert report["summary"]["total"] == len(EXPECTED_FINDINGS[name])
    assert result["outputs"]["primary"] == report["report_path"]


def test_severity_comes_from_the_cvss_vector(runs):
    _, report = ok(runs, "debian")
    rated = {f["id"]: f["severity"] for f in report["vulnerabilities"]}
    assert (rated["TEST-2026-0001"], rated["TEST-2026-0005"], rated["TEST-2026-0004"]) == (
        "critical", "medium", "unknown")
    assert report["summary"]["by_severity"] == {"critical": 1, "high": 0, "medium": 1, "low": 0, "unknown": 3}
    assert report["summary"]["fixable"] == 3


def test_scan_reads_the_packages_and_the_ecosystem(runs):
    expected = {"debian": ("Debian:12", "dpkg", "/var/lib/dpkg/status", 5),
                "rpm": ("Rocky Linux:9", "rpm", "/var/lib/rpm/rpmdb.sqlite", 2),
                "rpm8": ("Rocky Linux:8", "rpm", "/var/lib/rpm/Packages", 2),
                "apk": ("Alpine:v3.19", "apk", "/lib/apk/db/installed", 2)}
    for name, (ecosystem, database, path, count) in expected.items():
        _, report = ok(runs, name)
        assert report["os"]["ecosystem"] == ecosystem
        assert report["inventory"] == {"database": database, "path": path}
        assert report["packages"]["count"] == count, name  # Debian: the config-files-only one is not
        assert report["notes"] == [], name


def test_scan_report_and_sbom_are_outputs_of_the_job(runs):
    result, report = ok(runs, "debian")
    assert result["outputs"]["artifacts"] == [report["sbom_path"]]
    for path in (result["outputs"]["primary"], report["sbom_path"]):
        assert os.getxattr(path, OWNER_XATTR) == b"scan-debian-0001"


@pytest.mark.parametrize("name, purl", [
    ("debian", "pkg:deb/debian/libfoo1@1.2-3%2Bb1?arch=amd64&distro=debian-12"),
    ("rpm", "pkg:rpm/rocky/openssl-libs@3.0.7-24.el9?arch=x86_64&distro=rocky-9.3&epoch=1"),
    ("apk", "pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64&distro=alpine-3.19.1"),
])
def test_sbom_is_valid_cyclonedx_with_a_purl_per_package(runs, name, purl):
    _, report = ok(runs, name)
    with open(report["sbom_path"], encoding="utf-8") as fh:
        text = fh.read()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    components = json.loads(text)["components"]
    assert len(components) == report["packages"]["count"]
    assert purl in [c["purl"] for c in components]


def test_inspect_with_vulnerabilities_gives_the_same_findings_in_one_launch(runs):
    result, report = ok(runs, "inspect")
    assert findings(report["vulnerabilities"]) == sorted(EXPECTED_FINDINGS["debian"])
    assert report["packages"]["count"] == 5  # the inspection's own package section is still there
    assert result["data"]["vulnerabilities"]["summary"] == report["vulnerabilities"]["summary"]
    launches = [e for e in progress(runs, "scan-inspect-0001") if e.get("message") == "appliance running"]
    assert len(launches) == 1


def test_hostile_dpkg_status_completes_with_notes(runs):
    _, report = ok(runs, "hostile")
    assert report["packages"]["count"] == 1
    assert findings(report) == [("TEST-2026-0004", "bash", "5.2.15-2+b2", "bash", "5.2.15-2+b2", None,
                                 "not-fixed")]
    assert report["notes"] == [
        "dpkg status: package 'huge' skipped (unreadable name, version or architecture)",
        "dpkg status: package 'nul\\x00bytes' skipped (unreadable name, version or architecture)",
        "dpkg status: package '?' skipped (unreadable name, version or architecture)"]


def test_an_unreadable_rpm_database_fails_the_job_and_the_worker_lives_on(runs):
    result, _ = runs["badrpm"]
    assert result["status"] == "failed"
    assert result["error"]["code"] == "PACKAGE_DB_UNREADABLE"
    assert result["error"]["message"] == ("the guest's package database cannot be read: the rpm sqlite "
                                          "database cannot be read: file is not a database")
    echo, _ = runs["echo"]
    assert echo["status"] == "completed" and echo["data"] == {"after": "the scans"}
    assert runs["_proc"].returncode == 1, runs["_proc"].stderr[-2000:]  # one job failed, the run went on


def test_findings_are_counted_in_the_metrics(runs):
    metrics = runs["_metrics"]
    assert value(metrics, "guestkit_scan_findings_total", severity="critical") == 2  # scan + inspect
    assert value(metrics, "guestkit_scan_findings_total", severity="medium") == 2
