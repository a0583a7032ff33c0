"""guestkit.inspect and guestkit.convert through the whole worker: job files in, results out,
metrics read back from the one-shot textfile.

One worker run carries five inspect jobs (raw with a verified checksum, the upstream basic
example on the qcow2 copy, a qcow2 overlay backed by the raw image (--allow-backing-files), a
wrong checksum, a 2 s timeout), so the suite launches the
appliance only a handful of times.
"""

import copy
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import UPSTREAM_JOBS, cli, make_job, worker_env, write_job
from diskimage import EXPECTED, GUESTFS_ENV
from metricskit import parse, value

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.engine]

SHARED = UPSTREAM_JOBS


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def basic_example_data(image):
    with open(os.path.join(SHARED, "guestkit-inspect-basic.json")) as fh:
        data = copy.deepcopy(json.load(fh)["payload"]["data"])
    data["image"]["path"] = image
    data.pop("output", None)  # default destination: the work dir
    return data


def qemu_or_probe_processes(needle):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmd and state not in (b"Z", b"X") and ("qemu" in cmd or "guestfs" in cmd):
            found.append(cmd)
    return found


@pytest.fixture(scope="module")
def inspect_run(debian_image, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e-inspect")
    from conftest import Dirs
    dirs = Dirs(base)
    textdir = base / "textfile"
    textdir.mkdir()
    dest = base / "reports" / "raw-inspection.json"
    dest.parent.mkdir()
    raw, qcow2 = debian_image["raw"], debian_image["qcow2"]
    write_job(dirs.jobs, make_job("e2e-inspect-raw", "guestkit.inspect", {
        "image": {"path": raw, "format": "raw", "checksum": "sha256:" + sha256(raw)},
        "output": {"format": "json", "destination": str(dest)}}, execution={"timeout_seconds": 600}))
    write_job(dirs.jobs, make_job("e2e-inspect-qcow2", "guestkit.inspect", basic_example_data(qcow2),
                                  execution={"timeout_seconds": 600}))
    write_job(dirs.jobs, make_job("e2e-inspect-badsum", "guestkit.inspect", {
        "image": {"path": raw, "format": "raw", "checksum": "0" * 64}}))
    # a copy, so that no other job's image path matches when looking for leftover processes
    slow = base / "timeout-copy.qcow2"
    subprocess.run(["cp", "--reflink=auto", qcow2, str(slow)], check=True)
    write_job(dirs.jobs, make_job("e2e-inspect-timeout", "guestkit.inspect", {
        "image": {"path": str(slow), "format": "qcow2"}}, execution={"timeout_seconds": 2}))
    # an overlay backed by the raw image: allowed by --allow-backing-files (both under the allowed
    # test root); libguestfs gets the checked chain as a json: spec behind a pinned overlay
    backed = base / "backed-overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", str(backed)],
                   check=True)
    write_job(dirs.jobs, make_job("e2e-inspect-backed", "guestkit.inspect", {
        "image": {"path": str(backed), "format": "qcow2"}, "options": {"include_network": True}},
        execution={"timeout_seconds": 600}))
    env = worker_env(**GUESTFS_ENV)
    proc = cli("--once", "--max-concurrent", "2", "--allow-backing-files", "--textfile-dir", str(textdir),
               *dirs.args(), env=env, timeout=540)
    metrics = parse((textdir / "guestkit_worker.prom").read_text())
    return {"dirs": dirs, "proc": proc, "metrics": metrics, "dest": dest, "slow": str(slow),
            "raw_size": debian_image["raw_size"]}


def test_run_exit_status_and_archive(inspect_run):
    dirs = inspect_run["dirs"]
    assert inspect_run["proc"].returncode == 1, inspect_run["proc"].stderr[-3000:]  # two jobs must fail
    assert dirs.listing("done") == ["e2e-inspect-backed.json", "e2e-inspect-qcow2.json",
                                    "e2e-inspect-raw.json"]
    assert [n for n in dirs.listing("failed") if n.endswith(".reason.json")] == [
        "e2e-inspect-badsum.json.reason.json", "e2e-inspect-timeout.json.reason.json"]


def test_raw_image_inspected_exactly(inspect_run):
    dirs = inspect_run["dirs"]
    result = dirs.result("e2e-inspect-raw")
    assert result["status"] == "completed", result["error"]
    assert result["outputs"]["primary"] == str(inspect_run["dest"])
    s = result["data"]
    osb = s["operating_system"]
    assert (osb["type"], osb["distribution"], osb["version"]) == ("linux", "debian", EXPECTED["version"])
    assert (osb["major_version"], osb["minor_version"], osb["hostname"]) == (12, 5, EXPECTED["hostname"])
    assert (osb["package_format"], osb["package_management"], osb["osinfo"]) == ("deb", "apt", "debian12")
    assert s["packages"]["count"] == EXPECTED["package_count"]
    alice = next(a for a in s["users"]["accounts"] if a["name"] == "alice")
    assert alice == {"name": "alice", "uid": 1000, "home": "/home/alice", "shell": "/bin/bash",
                     "login": True, "system": False}
    assert s["services"]["enabled"] == [EXPECTED["enabled_unit"]]
    assert s["network"]["dns_servers"] == EXPECTED["dns_servers"]
    assert s["filesystems"]["sample"] == [{"device": "/dev/sda1", "type": "ext4", "uuid": EXPECTED["fs_uuid"],
                                           "label": EXPECTED["fs_label"]}]
    full = json.loads(inspect_run["dest"].read_text())
    assert full["operating_system"] == osb
    assert len(full["packages"]["packages"]) == EXPECTED["package_count"]
    with open(os.path.join(dirs.results, "e2e-inspect-raw-progress.jsonl")) as fh:
        phases = [json.loads(line)["phase"] for line in fh]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "validation", "checksum", "launch", "inspection", "export"]


def test_qcow2_basic_example_inspected(inspect_run):
    dirs = inspect_run["dirs"]
    result = dirs.result("e2e-inspect-qcow2")
    assert result["status"] == "completed", result["error"]
    s = result["data"]
    assert s["operating_system"]["distribution"] == "debian"
    assert s["operating_system"]["version"] == EXPECTED["version"]
    assert s["packages"]["count"] == EXPECTED["package_count"]
    assert s["services"]["enabled"] == [EXPECTED["enabled_unit"]]
    assert result["outputs"]["primary"] == os.path.join(dirs.work, "e2e-inspect-qcow2-inspection.json")
    assert json.loads(Path(result["outputs"]["primary"]).read_text())["image"]["format"] == "qcow2"


def test_backing_chain_inspected_through_the_checked_spec(inspect_run):
    """With --allow-backing-files a qcow2 overlay over the raw image is inspected through its
    checked chain (the appliance reads the backing file named in the json: spec)."""
    result = inspect_run["dirs"].result("e2e-inspect-backed")
    assert result["status"] == "completed", result["error"]
    assert result["data"]["operating_system"]["hostname"] == EXPECTED["hostname"]
    assert result["data"]["network"]["hostname"] == EXPECTED["hostname"]


def test_checksum_metrics_and_mismatch(inspect_run):
    dirs, m = inspect_run["dirs"], inspect_run["metrics"]
    bad = dirs.result("e2e-inspect-badsum")
    assert (bad["status"], bad["error"]["code"]) == ("failed", "CHECKSUM_MISMATCH")
    assert "0" * 64 in bad["error"]["message"] or bad["error"]["details"]["expected"] == "0" * 64
    with open(os.path.join(dirs.results, "e2e-inspect-badsum-progress.jsonl")) as fh:
        assert "launch" not in {json.loads(line)["phase"] for line in fh}  # no appliance for a bad image
    assert value(m, "guestkit_checksum_verifications_total", status="success") == 1
    assert value(m, "guestkit_checksum_verifications_total", status="failure") == 1
    assert value(m, "guestkit_checksum_verifications_total", status="skipped") == 3
    # two full passes over the raw image: the verified job and the mismatching one
    assert value(m, "guestkit_worker_disk_read_bytes_total") == 2 * inspect_run["raw_size"]
    assert value(m, "guestkit_worker_jobs_total", operation="guestkit.inspect", status="completed") == 3
    assert value(m, "guestkit_worker_jobs_total", operation="guestkit.inspect", status="failed") == 1
    assert value(m, "guestkit_worker_jobs_total", operation="guestkit.inspect", status="timeout") == 1
    assert value(m, "guestkit_handler_executions_total", handler="guestkit.inspect", status="timeout") == 1


def test_timeout_leaves_no_engine_process(inspect_run):
    result = inspect_run["dirs"].result("e2e-inspect-timeout")
    assert (result["status"], result["error"]["code"]) == ("timeout", "TIMEOUT")
    assert result["execution_summary"]["duration_seconds"] < 20
    assert qemu_or_probe_processes(inspect_run["slow"]) == []


def test_convert_round_trip_through_worker(debian_image, dirs, tmp_path):
    qemu_img = "qemu-img"
    raw = debian_image["raw"]
    q = tmp_path / "round.qcow2"
    back = tmp_path / "round.raw"
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    write_job(dirs.jobs, make_job("e2e-convert-to-qcow2", "guestkit.convert", {
        "image": {"path": raw, "format": "raw"}, "target_format": "qcow2", "compression": True,
        "output": {"destination": str(q)}}), "1.json")
    cli("--once", "--max-concurrent", "1", *dirs.args(), env=worker_env(), check=0)
    write_job(dirs.jobs, make_job("e2e-convert-to-raw", "guestkit.convert", {
        "image": {"path": str(q), "format": "qcow2"}, "target_format": "raw",
        "output": {"destination": str(back)}}), "2.json")
    before = back.exists()
    existing = tmp_path / "exists.qcow2"
    existing.write_bytes(b"keep me")
    write_job(dirs.jobs, make_job("e2e-convert-exists", "guestkit.convert", {
        "image": {"path": raw, "format": "raw"}, "target_format": "qcow2",
        "output": {"destination": str(existing)}}), "3.json")
    cli("--once", "--max-concurrent", "1", "--textfile-dir", str(textdir), *dirs.args(), env=worker_env(),
        check=1)
    assert not before
    first, second = dirs.result("e2e-convert-to-qcow2"), dirs.result("e2e-convert-to-raw")
    assert first["status"] == second["status"] == "completed"
    assert first["data"]["target_format"] == "qcow2" and first["outputs"]["primary"] == str(q)
    assert second["data"]["virtual_size"] == os.path.getsize(raw)
    cmp = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "raw", raw, str(back)], capture_output=True,
                         text=True)
    assert cmp.returncode == 0 and "Images are identical" in cmp.stdout
    refused = dirs.result("e2e-convert-exists")
    assert refused["error"]["code"] == "OUTPUT_EXISTS"
    assert existing.read_bytes() == b"keep me"
    m = parse((textdir / "guestkit_worker.prom").read_text())
    assert value(m, "guestkit_worker_disk_write_bytes_total") > 0
