"""Secure by default: without --allow-path a job can name no image and no output, so a
producer cannot copy or fingerprint files the worker can read."""

import hashlib
import os

import pytest
from conftest import cli, make_job, require_tool, worker_env, write_job

pytestmark = pytest.mark.integration

SECRET = "/etc/shadow"


def _no_policy_env():
    return worker_env(GUESTKIT_WORKER_ALLOW_PATH=None)


def test_without_allow_path_jobs_cannot_copy_or_fingerprint_host_files(dirs):
    """Without --allow-path, `convert /etc/shadow` writes no copy into work/, an inspect job with
    a wrong checksum does not answer the file's SHA-256 (nor whether it exists), and a convert
    writes no output: each fails with PATH_NOT_ALLOWED naming --allow-path."""
    require_tool("qemu-img")
    assert os.path.isfile(SECRET)
    write_job(dirs.jobs, make_job("steal-shadow-01", "guestkit.convert",
                                  {"image": {"path": SECRET, "format": "raw"}, "target_format": "raw"}))
    write_job(dirs.jobs, make_job("hash-shadow-001", "guestkit.inspect",
                                  {"image": {"path": SECRET, "format": "raw",
                                             "checksum": "sha256:" + "0" * 64}}))
    write_job(dirs.jobs, make_job("write-out-00001", "guestkit.convert",
                                  {"image": {"path": os.path.join(dirs.base, "missing.raw"), "format": "raw"},
                                   "target_format": "raw",
                                   "output": {"destination": os.path.join(dirs.base, "out.raw")}}))
    proc = cli("--once", *dirs.args(), env=_no_policy_env(), check=1)
    with open(SECRET, "rb") as fh:
        secret_sha = hashlib.sha256(fh.read()).hexdigest()
    for job_id in ("steal-shadow-01", "hash-shadow-001", "write-out-00001"):
        result = dirs.result(job_id)
        error = result["error"]
        assert result["status"] == "failed" and error["code"] == "PATH_NOT_ALLOWED", result
        assert "no --allow-path is set" in error["message"] and "--allow-path /" in error["message"]
        # nothing about the file: not whether it exists, not its size or checksum
        text = str(result)
        assert secret_sha not in text and "does not exist" not in text and "actual" not in text
    assert not [n for n in os.listdir(dirs.work) if n.startswith("steal")]  # no copy
    assert not os.path.exists(os.path.join(dirs.base, "out.raw"))
    assert "no --allow-path" in proc.stderr


def test_allow_path_root_allows_everything_with_a_warning(dirs, tmp_path):
    require_tool("qemu-img")
    image = os.path.join(dirs.base, "disk.raw")
    with open(image, "wb") as fh:
        fh.truncate(1 << 20)
    write_job(dirs.jobs, make_job("convert-any-001", "guestkit.convert",
                                  {"image": {"path": image, "format": "raw"}, "target_format": "qcow2"}))
    proc = cli("--once", "--allow-path", "/", *dirs.args(), env=_no_policy_env(), check=0)
    assert "WARNING" in proc.stderr and "--allow-path /" in proc.stderr
    assert dirs.result("convert-any-001")["status"] == "completed"
    assert os.path.isfile(os.path.join(dirs.work, "convert-any-001.qcow2"))
