"""Start-up imports only what the command being run needs: the real CLI under
``python -X importtime``, whose report names every module the process imported."""

import subprocess
import sys

import pytest
from conftest import worker_env

pytestmark = pytest.mark.integration

#: modules of other commands or of options not given (the REST API, the HTTP client of the
#: client commands, the Redis transport); none is needed to build the parser
NOT_AT_START = ("guestkit_worker.api.service", "guestkit_worker.api.app", "guestkit_worker.http.server",
                "guestkit_worker.client", "guestkit_worker.transports.redis", "redis")


def imported(*args, cwd=None):
    """(exit status, names of the modules imported) of ``python -X importtime -m guestkit_worker ARGS``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "guestkit_worker", *args], cwd=cwd,
                          env=worker_env(), capture_output=True, text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    return proc.returncode, names


def test_version_imports_no_transport_nor_api():
    status, names = imported("--version")
    assert status == 0
    assert "guestkit_worker.cli" in names  # the report is read right
    assert not {n for n in names if n.startswith(("guestkit_worker.transports.files", "guestkit_worker.api."))
                and n != "guestkit_worker.api.limits"} | (names & set(NOT_AT_START))


def test_once_on_empty_dir_imports_no_api_client_or_redis(dirs):
    status, names = imported("--once", *dirs.args(), "--metrics-enabled", "false")
    assert status == 0
    assert "guestkit_worker.runtime.worker" in names and "guestkit_worker.transports.files" in names
    assert not names & set(NOT_AT_START)


def test_once_with_api_addr_imports_the_api(dirs):
    """The counter-check: the same run with --api-addr does load the API."""
    status, names = imported("--once", *dirs.args(), "--metrics-enabled", "false",
                             "--api-addr", "127.0.0.1:0")
    assert status == 0
    assert {"guestkit_worker.api.service", "guestkit_worker.api.app"} <= names
