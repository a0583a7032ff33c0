"""Outputs never follow planted links: another user who may write the output directory plants
links where the worker writes; nothing outside changes."""

import contextlib
import json
import os
import stat
import subprocess
import threading

import pytest
from conftest import cli, fake_probe_python, make_job, require_tool, worker_env, write_job

pytestmark = pytest.mark.integration

PRECIOUS = b"precious root-owned content\n"


def _victim(base):
    path = os.path.join(base, "outside", "victim")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as fh:
        fh.write(PRECIOUS)
    return path


def test_inspect_report_does_not_follow_a_link_planted_at_the_temp_name(dirs):
    """A link planted at the report's temporary name `.<dest>.<job_id>.partial` is left alone:
    its target keeps its content, and the report is a new regular file at the destination
    (no write for the group, nothing for others)."""
    shared = os.path.join(dirs.base, "shared")
    os.makedirs(shared)
    victim = _victim(dirs.base)
    image = os.path.join(shared, "disk.raw")
    with open(image, "wb") as fh:
        fh.truncate(1 << 20)
    dest = os.path.join(shared, "report.json")
    planted = os.path.join(shared, ".report.json.planted-rep-0001.partial")
    os.symlink(victim, planted)
    write_job(dirs.jobs, make_job("planted-rep-0001", "guestkit.inspect",
                                  {"image": {"path": image, "format": "raw"},
                                   "output": {"destination": dest}}))
    env = worker_env(GUESTKIT_WORKER_GUESTFS_PYTHON=fake_probe_python(dirs.base),
                     SUPERMIN_KERNEL="/dev/null")
    cli("--once", "--allow-path", shared, *dirs.args(), env=env, check=0)
    with open(victim, "rb") as fh:
        assert fh.read() == PRECIOUS
    assert os.path.islink(planted) and os.readlink(planted) == victim  # untouched
    st = os.lstat(dest)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o027 == 0
    with open(dest) as fh:
        assert json.load(fh)["operating_system"] == {"type": "linux"}
    assert sorted(os.listdir(shared)) == sorted(["disk.raw", "report.json", os.path.basename(planted)])


def test_convert_output_cannot_be_redirected_by_racing_links(dirs):
    """qemu-img writes into a private 0700 directory reached through a held descriptor: an
    attacker who plants links at `.<dest>.<job_id>.partial` (a name qemu-img could be made to
    write through) and swaps the private directory for a link to a directory of theirs as fast
    as it can changes nothing outside."""
    require_tool("qemu-img")
    shared = os.path.join(dirs.base, "shared")
    os.makedirs(shared)
    victim = _victim(dirs.base)
    victim_dir = os.path.join(dirs.base, "outside", "dir")
    os.makedirs(victim_dir)
    image = os.path.join(shared, "disk.raw")
    with open(image, "wb") as fh:
        for i in range(64):
            fh.write(bytes([i + 1]) * 65536)
    dest = os.path.join(shared, "out.raw")
    job_id = "planted-cnv-0001"
    old_name = os.path.join(shared, f".out.raw.{job_id}.partial")
    stop, swapped = threading.Event(), []

    def attacker():
        n = 0
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.symlink(victim, old_name)
            try:
                entries = list(os.scandir(shared))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(f".out.raw.{job_id}.") and entry.is_dir(follow_symlinks=False):
                    n += 1
                    try:
                        os.rename(entry.path, os.path.join(shared, f"stolen-{n}"))
                        os.symlink(victim_dir, entry.path)
                        swapped.append(entry.name)
                    except OSError:
                        pass

    write_job(dirs.jobs, make_job(job_id, "guestkit.convert",
                                  {"image": {"path": image, "format": "raw"}, "target_format": "raw",
                                   "output": {"destination": dest}}))
    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    try:
        proc = cli("--once", "--allow-path", shared, *dirs.args(), timeout=120)
    finally:
        stop.set()
        thread.join(10)
    with open(victim, "rb") as fh:
        assert fh.read() == PRECIOUS
    assert os.listdir(victim_dir) == []
    result = dirs.result(job_id)
    if result["status"] == "completed":  # the swap may also have made the job fail cleanly
        assert stat.S_ISREG(os.lstat(dest).st_mode)
        compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", image, dest],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
    else:
        assert result["error"]["code"] == "OUTPUT_WRITE_FAILED", (result, proc.stderr[-2000:])
        assert not os.path.lexists(dest)
    assert swapped, "the attacker never saw the private directory"
