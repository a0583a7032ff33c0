"""Disk-image checksums: parse ``sha256:<hex>`` (or bare hex) and verify a file by streaming.

The file is read with ``readinto`` into one reusable buffer (4 MiB by default), so hashing runs
at close to hashlib's in-memory speed without allocating per chunk; hashlib releases the GIL on
large updates, so the worker's other threads keep running.  Cancellation is checked between
chunks, bytes read are added to the job's disk-read counter (even when the job is cancelled
half-way) and the outcome is counted with ``context.record_checksum_verification``.
"""

import contextlib
import hashlib
import logging
import os
import re
import time

from ..job.errors import HandlerError, JobValidationError

log = logging.getLogger(__name__)

SUPPORTED_ALGORITHMS = ("sha256",)
CHUNK_SIZE = 4 * 1024 * 1024
PROGRESS_INTERVAL = 1.0  # seconds between checksum progress events

_HEX = {"sha256": re.compile(r"[0-9a-f]{64}")}


def parse_checksum(value, field="payload.data.image.checksum"):
    """Return ``(algorithm, lowercase_hexdigest)`` for ``sha256:<hex>`` or a bare 64-digit hex.

    Raises JobValidationError naming field for anything else, including an unsupported
    algorithm such as ``md5:...``.
    """
    if not isinstance(value, str) or not value.strip():
        raise JobValidationError(field, "must be a non-empty string like sha256:<64 hex digits>")
    text = value.strip()
    if ":" in text:
        algorithm, _, digest = text.partition(":")
        algorithm = algorithm.strip().lower()
    else:
        algorithm, digest = "sha256", text
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise JobValidationError(
            field, f"unsupported checksum algorithm {algorithm!r}; supported: "
                   f"{', '.join(SUPPORTED_ALGORITHMS)} (written sha256:<hex> or bare hex)")
    digest = digest.strip().lower()
    if not _HEX[algorithm].fullmatch(digest):
        raise JobValidationError(field, f"{algorithm} digest must be 64 hexadecimal digits, got {digest!r}")
    return algorithm, digest


def sha256_file(path, context=None, chunk_size=CHUNK_SIZE, on_progress=None):
    """Stream path through SHA-256 and return the hex digest.

    With a context, cancellation is honoured between chunks (JobCancelled) and the bytes read
    are recorded as disk reads.  ``on_progress(done, total)`` is called at most once a second.
    """
    h = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    done = 0
    last = time.monotonic()
    job_id = context.job_id if context is not None else "-"
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        total = os.fstat(fd).st_size
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            while True:
                if context is not None:
                    context.check_cancelled()
                n = fh.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
                done += n
                if on_progress is not None and time.monotonic() - last >= PROGRESS_INTERVAL:
                    last = time.monotonic()
                    on_progress(done, total)
    finally:
        view.release()
        os.close(fd)
        if context is not None and done:
            context.record_disk_io(read_bytes=done)
        log.debug("job %s: hashed %s bytes of %s", job_id, done, path)
    return h.hexdigest()


def verify_sha256(path, expected, context, chunk_size=CHUNK_SIZE):
    """Verify path against expected (``sha256:<hex>`` or bare hex); return the digest.

    Records ``success`` or ``failure``; a mismatch raises HandlerError CHECKSUM_MISMATCH whose
    details hold the expected and actual digests, a read error raises IMAGE_READ_ERROR.
    """
    _, want = parse_checksum(expected)

    def report(done, total):
        pct = 100.0 * done / total if total else None
        context.progress("checksum", pct, f"sha256 {done // (1 << 20)} of {total // (1 << 20)} MiB")

    started = time.monotonic()
    try:
        got = sha256_file(path, context, chunk_size, on_progress=report)
    except OSError as exc:
        context.record_checksum_verification("failure")
        log.error("job %s: cannot read %s for checksum: %s", context.job_id, path, exc)
        raise HandlerError("IMAGE_READ_ERROR", f"cannot read {path} to verify its checksum: {exc}",
                           phase="checksum") from exc
    elapsed = time.monotonic() - started
    if got != want:
        context.record_checksum_verification("failure")
        log.error("job %s: checksum mismatch for %s: expected %s, actual %s",
                  context.job_id, path, want, got)
        raise HandlerError("CHECKSUM_MISMATCH",
                           f"sha256 of {path} is {got}, expected {want}",
                           phase="checksum",
                           details={"path": path, "algorithm": "sha256",
                                    "expected": want, "actual": got})
    context.record_checksum_verification("success")
    log.info("job %s: checksum verified for %s in %.2f s", context.job_id, path, elapsed)
    return got
