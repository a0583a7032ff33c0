"""The fast tier's guard (tests/conftest.py): in a run with -m "not integration", a test without
the integration marker that starts a process or listens on a socket fails with one line that
says to mark it, even when it catches the error or the call happens in another thread; marked
tests are left out and pure tests pass.  Checked by running pytest on a small probe module."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration

PROBE = '''
import socket, subprocess, threading
import pytest

def test_pure():
    assert 1 + 1 == 2

def test_starts_a_process():
    subprocess.run(["true"])

def test_swallows_the_refusal():
    try:
        subprocess.Popen(["true"])
    except Exception:
        pass

def test_listens_in_a_thread():
    def serve():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
    t = threading.Thread(target=serve)
    t.start()
    t.join()

@pytest.mark.integration
def test_marked():
    subprocess.run(["true"])
'''


def test_unmarked_tests_that_start_processes_or_listen_fail_in_the_fast_tier(tmp_path):
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = dict(os.environ, COLUMNS="500", PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
                           "-q", "-rA", "-m", "not integration", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "PASSED test_probe.py::test_pure" in out
    for name, what in (("test_starts_a_process", "starts a process"),
                       ("test_swallows_the_refusal", "starts a process"),
                       ("test_listens_in_a_thread", "binds a socket")):
        assert (f"FAILED test_probe.py::{name} - test_probe.py::{name} {what}, but has no integration "
                "marker: mark this test integration") in out, out
    assert "3 failed, 1 passed, 1 deselected" in out, out
