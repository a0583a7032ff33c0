"""Every time stamp the worker writes has one form, RFC 3339 in UTC with microseconds and
``Z`` (``2026-11-28T10:10:30.342027Z``): results, reasons, progress events, the inspection
report, job states and JSON log lines."""

import json
import os
import re

import pytest
from conftest import cli, fake_probe_python, make_job, require_tool, worker_env, write_job

pytestmark = pytest.mark.integration

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _jobs(dirs):
    """A convert (progress events), an inspection (a report) and a job no handler serves (a
    reason), all reading one small raw image."""
    image = os.path.join(dirs.base, "disk.raw")
    with open(image, "wb") as fh:
        fh.truncate(1 << 20)
    write_job(dirs.jobs, make_job("stamp-convert-1", "guestkit.convert", {
        "image": {"path": image, "format": "raw"}, "target_format": "qcow2",
        "output": {"destination": os.path.join(dirs.base, "disk.qcow2")}}))
    write_job(dirs.jobs, make_job("stamp-inspect-1", "guestkit.inspect", {
        "image": {"path": image, "format": "raw"},
        "output": {"destination": os.path.join(dirs.base, "report.json")}}))
    write_job(dirs.jobs, make_job("stamp-reject-1", "no.such.operation"))


def test_every_time_stamp_the_worker_writes_is_utc_with_z(dirs):
    require_tool("qemu-img")
    _jobs(dirs)
    env = worker_env(GUESTKIT_WORKER_GUESTFS_PYTHON=fake_probe_python(dirs.base),
                     SUPERMIN_KERNEL="/dev/null")
    proc = cli("--once", "--log-format", "json", *dirs.args(), env=env, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the rejected job
    results = dirs.all_results()
    assert {j: r["status"] for j, r in results.items()} == {
        "stamp-convert-1": "completed", "stamp-inspect-1": "completed", "stamp-reject-1": "failed"}
    stamps = {}
    for job_id, result in results.items():
        stamps[f"{job_id} result completed_at/failed_at"] = result.get("completed_at") or result["failed_at"]
    stamps["convert started_at"] = results["stamp-convert-1"]["execution_summary"]["started_at"]
    with open(os.path.join(dirs.results, "stamp-convert-1-progress.jsonl"), encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh]
    assert len(events) >= 3
    for i, event in enumerate(events):
        stamps[f"progress event {i} ({event['phase']})"] = event["timestamp"]
    report = _read_json(os.path.join(dirs.base, "report.json"))
    stamps["inspection report generated_at"] = report["generated_at"]
    stamps["reason at"] = dirs.reason("stamp-reject-1.json")["at"]
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert len(lines) >= 5
    stamps.update({f"log line {i}": line["time"] for i, line in enumerate(lines)})
    status = json.loads(cli("status", "stamp-convert-1", "--jobs-dir", dirs.jobs, "--results-dir",
                            dirs.results, check=0).stdout)
    stamps.update({f"status {k}": status[k] for k in ("submitted_at", "started_at", "completed_at")})
    wrong = {name: value for name, value in stamps.items() if not STAMP.fullmatch(str(value))}
    assert not wrong, wrong
