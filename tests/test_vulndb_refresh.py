"""contrib/vulndb/guestkit-worker-vulndb-refresh (run by guestkit-worker-vulndb.service) against a
real HTTP server on 127.0.0.1: good dumps replace the old ones, a corrupt or missing dump keeps
the previous all.zip, names the ecosystem on stderr and makes the exit status 1; nothing
half-written is left."""

import functools
import http.server
import io
import json
import os
import subprocess
import threading
import zipfile

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration

SCRIPT = os.path.join(ROOT, "contrib", "vulndb", "guestkit-worker-vulndb-refresh")


def a_zip(name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        record = json.dumps({"id": name, "modified": "2026-12-01T00:00:00Z"})
        zf.writestr(zipfile.ZipInfo(f"{name}.json", date_time=(2026, 12, 1, 0, 0, 0)), record)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    """A static HTTP server of tmp_path/served on 127.0.0.1 (port 0); its base URL."""
    served = tmp_path / "served"
    for eco, data in (("Debian", a_zip("DSA-1")), ("Rocky Linux", b"PK\x03\x04 truncated zip")):
        (served / eco).mkdir(parents=True)
        (served / eco / "all.zip").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(10)


def test_refresh_replaces_good_dumps_and_keeps_the_rest(server, tmp_path):
    target = tmp_path / "vulndb"
    for eco in ("Debian", "Rocky Linux", "Alpine"):
        (target / eco).mkdir(parents=True)
        (target / eco / "all.zip").write_bytes(a_zip(f"OLD-{eco}"))
    env = dict(os.environ, GUESTKIT_WORKER_VULN_DB=str(target), GUESTKIT_WORKER_VULNDB_URL=server,
               GUESTKIT_WORKER_VULNDB_ECOSYSTEMS="Debian,Rocky Linux,Alpine")
    proc = subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "curl: (22)" in proc.stderr  # curl's own words about the 404 come first
    assert proc.stdout == f"refreshed Debian from {server}/Debian/all.zip\n"
    assert [line for line in proc.stderr.splitlines() if line.startswith("cannot")] == [
        f"cannot refresh Rocky Linux from {server}/Rocky%20Linux/all.zip: the previous all.zip stays",
        f"cannot refresh Alpine from {server}/Alpine/all.zip: the previous all.zip stays"]
    assert (target / "Debian" / "all.zip").read_bytes() == a_zip("DSA-1")
    assert (target / "Rocky Linux" / "all.zip").read_bytes() == a_zip("OLD-Rocky Linux")
    assert (target / "Alpine" / "all.zip").read_bytes() == a_zip("OLD-Alpine")
    assert sorted(p.name for p in target.rglob("*")) == ["Alpine", "Debian", "Rocky Linux"] + ["all.zip"] * 3
