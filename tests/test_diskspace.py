"""/health's disk_space check: free space and free inodes (statvfs) of the results, jobs and
work directories against --min-free-space and the inode floor, on a real small tmpfs."""

import argparse
import contextlib
import json
import os
import subprocess

import pytest
from conftest import require, wait_for
from faultkit import Worker
from metricskit import get, parse, scrape, value

from guestkit_worker.cli.optiontypes import size


@contextlib.contextmanager
def _tmpfs(path, options):
    """A real tmpfs mounted on path (root only; in CI a failed mount fails the test)."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True,
                          text=True)
    require(proc.returncode == 0, f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def _health(w):
    status, _, body = get(w.url + "/health")
    return status, json.loads(body)


def _gauge_becomes(w, expected):
    """guestkit_worker_health_check{check="disk_space"} once it shows expected (the gauge is
    evaluated at most once every few seconds)."""
    wait_for(lambda: value(parse(scrape(w.url)), "guestkit_worker_health_check", check="disk_space")
             == expected, timeout=30, what=f"disk_space gauge {expected}")


@pytest.mark.integration
def test_full_results_dir_makes_health_503_until_space_returns(dirs):
    with _tmpfs(dirs.results, "size=1m"):
        w = Worker(dirs, "--min-free-space", "256K")
        try:
            w.wait_running()
            status, body = _health(w)
            assert status == 200 and body["checks"]["disk_space"]["ok"] is True, body
            _gauge_becomes(w, 1)
            with open(os.path.join(dirs.results, "filler"), "wb") as fh:  # 1 MiB tmpfs: under 256K left
                fh.write(b"\0" * (900 * 1024))
            status, body = _health(w)
            assert status == 503 and body["status"] == "unhealthy", body
            detail = body["checks"]["disk_space"]["detail"]
            assert body["checks"]["disk_space"]["ok"] is False and detail.startswith("low: results ")
            assert dirs.base not in json.dumps(body)  # roles, never paths
            assert [n for n, c in body["checks"].items() if not c["ok"]] == ["disk_space"]
            _gauge_becomes(w, 0)
            os.unlink(os.path.join(dirs.results, "filler"))
            status, body = _health(w)
            assert status == 200 and body["checks"]["disk_space"]["ok"] is True, body
            _gauge_becomes(w, 1)
        finally:
            w.ensure_stopped()


@pytest.mark.integration
def test_few_free_inodes_make_health_503(dirs):
    with _tmpfs(dirs.work, "size=4m,nr_inodes=1100"):
        w = Worker(dirs, "--min-free-space", "1M")
        try:
            w.wait_running()
            assert _health(w)[0] == 200
            for i in range(200):  # leave fewer than 1000 free inodes
                open(os.path.join(dirs.work, f"f{i}"), "wb").close()
            status, body = _health(w)
            assert status == 503 and body["checks"]["disk_space"]["detail"].startswith("low: work "), body
            assert "inodes" in body["checks"]["disk_space"]["detail"]
            for i in range(200):
                os.unlink(os.path.join(dirs.work, f"f{i}"))
            assert _health(w)[0] == 200
        finally:
            w.ensure_stopped()


@pytest.mark.integration
def test_default_floor_refuses_a_small_work_dir(dirs):
    """The default --min-free-space is 100 MiB: a 4 MiB work directory is reported at once."""
    with _tmpfs(dirs.work, "size=4m"):
        w = Worker(dirs)
        try:
            w.wait_running()
            status, body = _health(w)
            assert status == 503 and "floor 100.0 MiB" in body["checks"]["disk_space"]["detail"], body
        finally:
            w.ensure_stopped()


@pytest.mark.parametrize("text,expected", [("0", 0), ("4096", 4096), ("512M", 512 << 20), ("1G", 1 << 30),
                                           ("1GiB", 1 << 30), ("64k", 64 << 10)])
def test_size_values(text, expected):
    assert size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5G", "10X", "lots"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a size"):
        size(text)
