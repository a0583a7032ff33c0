"""Shared test helpers: a recording metrics object, a real HandlerContext, the disk-image fixture.

Test modules import what they need (``from fixtures_disk import debian_image, make_context``);
the session-scoped ``debian_image`` fixture builds the image once per session even when several
modules import it (the result is cached at module level).
"""

import types

import pytest
from diskimage import GUESTFS_ENV, build_debian_image, require_tool

from guestkit_worker.runtime.context import HandlerContext

_CACHE = {}


class RecordingMetrics:
    """Stands in for the worker's metrics: records checksum outcomes and disk I/O."""

    def __init__(self):
        self.checksums = []
        self.read_bytes = 0
        self.write_bytes = 0

    def checksum(self, status):
        self.checksums.append(status)

    def disk_io(self, read_bytes=0, write_bytes=0):
        self.read_bytes += read_bytes
        self.write_bytes += write_bytes


class RecordingProgress:
    """Stands in for the transport's progress store: keeps every event the handler reports."""

    def __init__(self):
        self.events = []

    def __call__(self, job_id, event):
        self.events.append(event)


def make_context(work_dir, job_id="test-job-0001", **kw):
    """A real HandlerContext for job_id working in work_dir, with a RecordingMetrics and a
    RecordingProgress (``ctx._progress_sink.events``); its allowed_paths default to the test
    root (conftest.allowed_roots)."""
    metrics = RecordingMetrics()
    if "allowed_paths" not in kw:
        from conftest import allowed_roots
        kw["allowed_paths"] = allowed_roots()
    ctx = HandlerContext(types.SimpleNamespace(job_id=job_id), worker_id="t",
                         work_dir=str(work_dir), metrics=metrics, progress_sink=RecordingProgress(), **kw)
    return ctx, metrics


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory):
    """Build the Debian 12 test image once: dict(raw=, qcow2=, expected=, raw_size=)."""
    require_tool("sfdisk", "mkfs.ext4", "qemu-img")
    if "image" not in _CACHE:
        _CACHE["image"] = build_debian_image(tmp_path_factory.mktemp("diskimage"))
    return _CACHE["image"]


@pytest.fixture
def guestfs_env(monkeypatch):
    """Force libguestfs to the direct backend with TCG (nested KVM crashes qemu here)."""
    require_tool("guestfs")
    for key, value in GUESTFS_ENV.items():
        monkeypatch.setenv(key, value)
