"""No engine outlives its worker: children die with a SIGKILLed worker (PR_SET_PDEATHSIG via
setpriv), and what their own children left (processes, scratch directories) is cleaned by the
next start."""

import os
import signal

import pytest
from conftest import cli, make_job, require_tool, start_worker, wait_for, write_job

pytestmark = pytest.mark.integration


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


def _read_pid(path):
    try:
        with open(path) as fh:
            text = fh.read()
        return int(text) if text else None
    except OSError:
        return None


def test_a_sigkilled_workers_child_dies_and_the_next_start_kills_the_rest(dirs, tmp_path):
    require_tool("setpriv")
    child_file, grand_file = str(tmp_path / "child.pid"), str(tmp_path / "grandchild.pid")
    write_job(dirs.jobs, make_job("orphan-child-01", "test.child",
                                  {"pid_file": child_file, "grandchild_pid_file": grand_file}))
    proc = start_worker(dirs, "--metrics-enabled", "false", "--worker-id", "orphan-w1")
    try:
        wait_for(lambda: _read_pid(child_file) and _read_pid(grand_file), timeout=30,
                 what="child and grandchild")
    finally:
        proc.kill()  # SIGKILL: no handler of the worker runs
        proc.wait(timeout=10)
    child, grandchild = _read_pid(child_file), _read_pid(grand_file)
    # what an inspect job leaves in work/ (its libguestfs scratch), and another job's that must stay
    os.makedirs(os.path.join(dirs.work, ".orphan-child-01.guestfs-x1y2z3", "sock"))
    os.makedirs(os.path.join(dirs.work, ".other-job-0001.guestfs-a1b2c3"))
    try:
        # the kernel kills the child when its worker dies (not reparented to init, running on)
        wait_for(lambda: not _alive(child), timeout=10, what=f"child {child} killed with its worker")
        # the grandchild (in the child's session, like qemu under libguestfs) is not covered by that
        assert _alive(grandchild)
        start = cli("--once", "--metrics-enabled", "false", "--worker-id", "orphan-w2", *dirs.args())
        assert "killed 1 process(es) left by dead worker orphan-w1" in start.stderr, start.stderr[-2000:]
        wait_for(lambda: not _alive(grandchild), timeout=10,
                 what=f"grandchild {grandchild} killed by the next start")
        assert os.listdir(os.path.join(dirs.work, ".children")) == []
        assert sorted(n for n in os.listdir(dirs.work) if n.startswith(".") and n != ".children") == \
            [".other-job-0001.guestfs-a1b2c3"]
    finally:
        for pid in (child, grandchild):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
