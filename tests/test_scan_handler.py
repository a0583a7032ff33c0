"""guestkit.scan's payload checks, its failures before any appliance launch, the missing
``scan`` extra, and the inventory's choice of package database (no appliance here)."""

import json
import os
import sys
import threading
import time

import pytest
from conftest import wait_for
from fixtures_disk import make_context
from osvkit import affected, record, write_zip

from guestkit_worker import vulns as vulns_package
from guestkit_worker.handlers.inspect import InspectHandler
from guestkit_worker.handlers.registry import default_registry
from guestkit_worker.handlers.scan import ScanHandler
from guestkit_worker.job.errors import EngineUnavailable, HandlerError, JobCancelled, JobValidationError
from guestkit_worker.system import procs
from guestkit_worker.vulns import osvdb, sbom
from guestkit_worker.vulns.inventory import read_inventory
from guestkit_worker.vulns.model import GuestOS, InstalledPackage

IMAGE = {"path": "/srv/images/web-01.qcow2", "format": "qcow2"}


def handler(allowed=("/",)):
    h = ScanHandler()
    h.configure_paths(list(allowed))
    return h


def test_scan_is_registered():
    reg = default_registry(load_plugins=False)
    assert isinstance(reg.get("guestkit.scan"), ScanHandler)
    assert reg.get("guestkit.scan").payload_types == ("guestkit.scan.v1",)


@pytest.mark.parametrize("data, field, words", [
    ({"image": IMAGE, "sbom": {"format": "spdx"}}, "payload.data.sbom.format", "only 'cyclonedx'"),
    ({"image": IMAGE, "output": {"destination": "/srv/r/a.json"}, "sbom": {"destination": "/srv/r/a.json"}},
     "payload.data.sbom.destination", "must differ from payload.data.output.destination"),
    ({"image": IMAGE, "sbom": {"overwrite": "yes"}}, "payload.data.sbom.overwrite", "true or false"),
    ({"image": IMAGE, "sbom": "cyclonedx"}, "payload.data.sbom", "must be an object"),
    ({"image": IMAGE, "options": {}}, "payload.data.options", "unknown field; known: image, output, sbom"),
    ({"image": dict(IMAGE, format=None)}, "payload.data.image.format", "is required"),
    ({"image": IMAGE, "output": {"format": "xml"}}, "payload.data.output.format", "only 'json'"),
])
def test_scan_payload_checks(data, field, words):
    with pytest.raises(JobValidationError) as exc:
        handler().validate(data)
    assert exc.value.field == field and words in exc.value.reason


def test_sbom_destination_outside_the_allowed_paths_is_refused_first(tmp_path):
    data = {"image": {"path": str(tmp_path / "absent.qcow2"), "format": "qcow2"},
            "sbom": {"destination": "/etc/guestkit.cdx.json"}}
    with pytest.raises(JobValidationError) as exc:
        handler([str(tmp_path)]).validate(data)
    assert (exc.value.code, exc.value.field) == ("PATH_NOT_ALLOWED", "payload.data.sbom.destination")


def test_inspect_vulnerabilities_option_is_a_boolean():
    h = InspectHandler()
    h.configure_paths(["/"])
    with pytest.raises(JobValidationError) as exc:
        h.validate({"image": IMAGE, "options": {"vulnerabilities": "yes"}})
    assert exc.value.field == "payload.data.options.vulnerabilities"


def test_no_database_fails_before_the_image_is_opened(tmp_path):
    ctx, _ = make_context(tmp_path)
    with pytest.raises(HandlerError) as exc:
        handler().execute(ctx, {"image": {"path": str(tmp_path / "absent.qcow2"), "format": "qcow2"}})
    assert exc.value.code == "VULN_DB_UNAVAILABLE"
    assert ctx._progress_sink.events == []  # not even the validation phase began


def test_missing_scan_extra_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "guestkit_worker.vulns.scanning", None)  # as if python-debian failed
    monkeypatch.delattr(vulns_package, "scanning", raising=False)
    ctx, _ = make_context(tmp_path)
    with pytest.raises(EngineUnavailable) as exc:
        handler().execute(ctx, {"image": IMAGE})
    assert exc.value.message.endswith("pip install '.[scan]' in a checkout")
    monkeypatch.setitem(sys.modules, "cyclonedx", None)
    monkeypatch.setitem(sys.modules, "cyclonedx.model", None)
    hint = r"needs cyclonedx-python-lib .*pip install '\.\[scan\]' in a checkout"
    with pytest.raises(ImportError, match=hint):
        sbom.cyclonedx_json(GuestOS("debian", "12"), [])


def extract(tmp_path, files):
    """A probe extract directory holding files {guest path: bytes}."""
    names = {}
    for guest_path, data in files.items():
        name = guest_path.strip("/").replace("/", "_")
        (tmp_path / name).write_bytes(data)
        names[guest_path] = name
    (tmp_path / "manifest.json").write_text(json.dumps({"files": names, "notes": ["a probe note"]}))
    return str(tmp_path)


def test_inventory_reads_the_distribution_s_database_and_notes_the_rest(tmp_path):
    inv = read_inventory(extract(tmp_path, {
        "/etc/os-release": b"ID=debian\nVERSION_ID=12\n",
        "/var/lib/dpkg/status": b"Package: a\nStatus: install ok installed\nVersion: 1\n\n",
        "/lib/apk/db/installed": b"P:b\nV:1-r0\n\n"}))
    assert inv.packages == [InstalledPackage("a", "1", "a", "1", "", "dpkg")]
    assert inv.notes == ["a probe note", "the apk installed database /lib/apk/db/installed was not read: "
                                         "the guest's packages are dpkg's"]


def test_inventory_without_database_or_ecosystem_says_so(tmp_path):
    inv = read_inventory(extract(tmp_path, {"/etc/os-release": b"ID=gentoo\n"}))
    assert (inv.packages, inv.guest_os.ecosystem) == ([], None)
    assert inv.notes[1:] == ["no package database (dpkg, rpm or apk) found in the guest; no package was read",
                             "no OSV ecosystem is known for the distribution 'gentoo' (supported: almalinux, "
                             "alpine, debian, rocky, ubuntu); no package was matched"]


def test_scan_report_has_one_notes_list_with_the_os_note_once(tmp_path):
    """Nothing looked up (no ecosystem for the guest): the reason is in ``notes`` beside what the
    readers skipped, once and first, and there is no second note field; a guest fully looked up has []."""
    write_zip(tmp_path / "osv", "Debian", [record("DSA-1", affected("Debian:12", "a", [{"introduced": "0"}]),
                                                  modified="2026-12-01T00:00:00Z")])
    database = osvdb.load_database(str(tmp_path / "osv"))
    context, _ = make_context(tmp_path)
    (tmp_path / "gentoo").mkdir()
    report, inv = InspectHandler()._scan_extracted(context, database, extract(tmp_path / "gentoo", {
        "/etc/os-release": b"ID=gentoo\n"}))
    assert "note" not in report and "note" not in report["os"]
    assert sorted(report["notes"]) == sorted(inv.notes) and len(set(report["notes"])) == 3
    assert report["notes"][0].startswith("no OSV ecosystem is known for the distribution 'gentoo'")
    (tmp_path / "debian").mkdir()
    report, _ = InspectHandler()._scan_extracted(context, database, extract(tmp_path / "debian", {
        "/etc/os-release": b"ID=debian\nVERSION_ID=12\n",
        "/var/lib/dpkg/status": b"Package: a\nStatus: install ok installed\nVersion: 1\n\n"}))
    assert report["summary"]["total"] == 1 and report["notes"] == ["a probe note"]


@pytest.mark.integration
@pytest.mark.parametrize("reason", ["timeout", "cancelled"])
def test_db_dump_is_killed_with_its_tree_by_the_job_s_cancel_or_timeout(tmp_path, monkeypatch, reason):
    """A db_dump that hangs (a hostile Berkeley DB) and a process it started stop when the job is
    cancelled or its deadline passes (the worker calls context.cancel for both); the handler
    then raises JobCancelled, not PACKAGE_DB_UNREADABLE after db_dump's own 120 s limit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "db_dump"
    fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nsleep 600 &\necho $! > {tmp_path}/kid\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "x").mkdir()
    directory = extract(tmp_path / "x", {"/etc/os-release": b"ID=rocky\nVERSION_ID=8.9\n",
                                          "/var/lib/rpm/Packages": b"\0" * 8192})
    context, _ = make_context(tmp_path)
    timer = threading.Timer(1.0, context.cancel, [reason])
    timer.start()
    started = time.monotonic()
    with pytest.raises(JobCancelled, match=reason):
        InspectHandler()._scan_extracted(context, None, directory)
    timer.cancel()
    assert time.monotonic() - started < 30
    pids = [int((tmp_path / name).read_text()) for name in ("pid", "kid")]
    wait_for(lambda: not any(procs.alive(p) for p in pids), timeout=10, what=f"db_dump and its child {pids}")
