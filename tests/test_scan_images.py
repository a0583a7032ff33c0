"""guestkit.scan and guestkit.inspect with ``options.vulnerabilities`` on real disk images built
from files the tests write (tests/vulnimages.py): a Debian, an rpm (Rocky) and an apk (Alpine)
guest and a Debian guest with a hostile dpkg status, matched against an OSV database in OSV's
own layout.  Five appliance launches in all, one per job, shared by the module's tests.
"""

import json
import os

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from diskimage import require_tool
from fixtures_disk import guestfs_env, make_context  # noqa: F401
from vulnimages import EXPECTED_FINDINGS, build_scan_images, write_osv_database

from guestkit_worker.engines.outputs import OWNER_XATTR
from guestkit_worker.handlers.inspect import InspectHandler
from guestkit_worker.handlers.scan import ScanHandler

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


def run_job(handler, tmp_path, job_id, data, osv):
    """validate + execute + cleanup of one job in a real HandlerContext; (result, context)."""
    handler.configure_paths(__import__("conftest").allowed_roots())
    handler.configure_vulns(osv, 7 * 86400)
    ctx, _ = make_context(tmp_path, job_id=job_id)
    handler.validate(data)
    try:
        return handler.execute(ctx, data), ctx
    finally:
        handler.cleanup(ctx)


@pytest.fixture(scope="module")
def runs(scan_images, tmp_path_factory):
    """Each job once: {name: (HandlerResult or the exception, report dict or None)}."""
    require_tool("guestfs")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    base = tmp_path_factory.mktemp("scanruns")
    out = {}
    deb_out = {"format": "json", "destination": str(base / "deb-scan.json")}
    deb_sbom = {"format": "cyclonedx", "destination": str(base / "deb.cdx.json")}
    jobs = {
        "debian": (ScanHandler(), {"image": {"path": scan_images["debian"]["qcow2"], "format": "qcow2"},
                                   "output": deb_out, "sbom": deb_sbom}),
        "inspect": (InspectHandler(), {"image": {"path": scan_images["debian"]["raw"], "format": "raw"},
                                       "options": {"include_packages": True, "vulnerabilities": True}}),
        "rpm": (ScanHandler(), {"image": {"path": scan_images["rpm"]["qcow2"], "format": "qcow2"},
                                "sbom": {"format": "cyclonedx"}}),
        "apk": (ScanHandler(), {"image": {"path": scan_images["apk"]["qcow2"], "format": "qcow2"},
                                "sbom": {"format": "cyclonedx"}}),
        "hostile": (ScanHandler(), {"image": {"path": scan_images["hostile"]["qcow2"], "format": "qcow2"}}),
    }
    for name, (handler, data) in jobs.items():
        work = base / name
        work.mkdir()
        try:
            result, _ = run_job(handler, work, f"scan-{name}-0001", data, scan_images["osv"])
        except Exception as exc:  # the test of that job reports it
            out[name] = (exc, None)
            continue
        with open(result.output, encoding="utf-8") as fh:
            out[name] = (result, json.load(fh))
    return out


def ok(runs, name):
    result, report = runs[name]
    assert report is not None, f"{name}: {result!r}"
    return result, report


def findings(report):
    return sorted((f["id"], f["package"], f["version"], f["source_package"], f["source_version"],
                   f["fixed_version"], f["state"]) for f in report["vulnerabilities"])


@pytest.mark.parametrize("name", ["debian", "rpm", "apk"])
def test_scan_finds_exactly_the_expected_vulnerabilities(runs, name):
    result, report = ok(runs, name)
    assert findings(report) == sorted(EXPECTED_FINDINGS[name])
    assert result.data["summary"] == report["summary"]
    assert report["summary"]["total"] == len(EXPECTED_FINDINGS[name])
    assert result.output == report["report_path"]


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
                "apk": ("Alpine:v3.19", "apk", "/lib/apk/db/installed", 2)}
    for name, (ecosystem, database, path, count) in expected.items():
        _, report = ok(runs, name)
        assert report["os"]["ecosystem"] == ecosystem
        assert report["inventory"] == {"database": database, "path": path}
        assert report["packages"]["count"] == count, name  # Debian: the config-files-only one is not
        assert report["notes"] == [], name


def test_scan_report_and_sbom_are_outputs_of_the_job(runs):
    result, report = ok(runs, "debian")
    assert result.artifacts == [report["sbom_path"]]
    for path in (result.output, report["sbom_path"]):
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
    assert result.data["vulnerabilities"]["summary"] == report["vulnerabilities"]["summary"]


def test_hostile_dpkg_status_completes_with_notes(runs):
    _, report = ok(runs, "hostile")
    assert report["packages"]["count"] == 1
    assert findings(report) == [("TEST-2026-0004", "bash", "5.2.15-2+b2", "bash", "5.2.15-2+b2", None,
                                 "not-fixed")]
    assert report["notes"] == [
        "dpkg status: package 'huge' skipped (unreadable name, version or architecture)",
        "dpkg status: package 'nul\\x00bytes' skipped (unreadable name, version or architecture)",
        "dpkg status: package '?' skipped (unreadable name, version or architecture)"]
