"""Tests of guestkit_worker.system.checksum: parsing, streaming verification, metrics, cancellation."""

import hashlib
import os

import pytest
from fixtures_disk import make_context

from guestkit_worker.job.errors import HandlerError, JobCancelled, JobValidationError
from guestkit_worker.system import checksum

pytestmark = pytest.mark.timeout(120)

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _file(tmp_path, size, name="data.bin"):
    path = tmp_path / name
    block = bytes(range(256)) * 4096  # 1 MiB, not all zeros
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n
    return str(path)


def _digest(path):
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@pytest.mark.parametrize("value", [
    "sha256:" + EMPTY_SHA256, EMPTY_SHA256, "SHA256:" + EMPTY_SHA256.upper(), " " + EMPTY_SHA256 + "\n"])
def test_parse_accepts_sha256_forms(value):
    assert checksum.parse_checksum(value) == ("sha256", EMPTY_SHA256)


def test_parse_rejects_unsupported_algorithm_naming_supported():
    with pytest.raises(JobValidationError) as exc:
        checksum.parse_checksum("md5:d41d8cd98f00b204e9800998ecf8427e")
    assert exc.value.field == "payload.data.image.checksum"
    assert "'md5'" in exc.value.reason and "supported: sha256" in exc.value.reason


@pytest.mark.parametrize("value", ["", "sha256:", "sha256:abc", EMPTY_SHA256[:-1] + "g", 42, None,
                                   EMPTY_SHA256 + "00"])
def test_parse_rejects_malformed(value):
    with pytest.raises(JobValidationError):
        checksum.parse_checksum(value)


def test_verify_success_counts_bytes_and_status(tmp_path):
    path = _file(tmp_path, 9 * 1024 * 1024 + 123)  # not a multiple of the chunk size
    ctx, metrics = make_context(tmp_path)
    got = checksum.verify_sha256(path, "sha256:" + _digest(path), ctx)
    assert got == _digest(path)
    assert metrics.checksums == ["success"]
    assert metrics.read_bytes == os.path.getsize(path) == ctx.disk_read_bytes


def test_verify_empty_file(tmp_path):
    path = _file(tmp_path, 0)
    ctx, metrics = make_context(tmp_path)
    assert checksum.verify_sha256(path, EMPTY_SHA256, ctx) == EMPTY_SHA256
    assert metrics.checksums == ["success"] and metrics.read_bytes == 0


def test_verify_mismatch_reports_both_digests(tmp_path):
    path = _file(tmp_path, 1000)
    ctx, metrics = make_context(tmp_path)
    with pytest.raises(HandlerError) as exc:
        checksum.verify_sha256(path, EMPTY_SHA256, ctx)
    err = exc.value
    assert err.code == "CHECKSUM_MISMATCH"
    assert err.details["expected"] == EMPTY_SHA256
    assert err.details["actual"] == _digest(path)
    assert metrics.checksums == ["failure"]
    assert metrics.read_bytes == 1000


def test_verify_unreadable_file_is_read_error(tmp_path):
    ctx, metrics = make_context(tmp_path)
    with pytest.raises(HandlerError) as exc:
        checksum.verify_sha256(str(tmp_path / "missing"), EMPTY_SHA256, ctx)
    assert exc.value.code == "IMAGE_READ_ERROR"
    assert metrics.checksums == ["failure"]


def test_cancelled_between_chunks(tmp_path):
    path = _file(tmp_path, 64 * 1024 * 1024)
    ctx, metrics = make_context(tmp_path)
    ctx.cancel("timeout")  # as the watchdog does, before the first chunk is read
    with pytest.raises(JobCancelled) as exc:
        checksum.verify_sha256(path, EMPTY_SHA256, ctx, chunk_size=1024 * 1024)
    assert exc.value.code == "TIMEOUT"
    assert metrics.checksums == []  # neither success nor failure
    assert metrics.read_bytes < os.path.getsize(path)


def test_cancel_mid_stream_stops_early(tmp_path):
    path = _file(tmp_path, 32 * 1024 * 1024)
    ctx, metrics = make_context(tmp_path)
    orig = ctx.check_cancelled
    calls = {"n": 0}

    def check():  # cancel when the third chunk is about to be read
        calls["n"] += 1
        if calls["n"] == 3:
            ctx.cancel("shutdown")
        orig()

    ctx.check_cancelled = check
    with pytest.raises(JobCancelled):
        checksum.sha256_file(path, ctx, chunk_size=1024 * 1024)
    assert metrics.read_bytes == 2 * 1024 * 1024  # two chunks read before the cancel was seen
