"""Optional protection of /metrics: a bearer token file (--metrics-token-file), checked with curl
and scraped by a real Prometheus whose scrape_config carries the token (the config README shows)."""

import json
import subprocess
import urllib.parse

import pytest
from conftest import cli, require_tool, start_worker, wait_for
from metricskit import start_and_find_port, stop, worker_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
TOKEN = "s3cret-metrics-token-0123456789"


def _curl(curl, url, *headers):
    out = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          *sum((["-H", h] for h in headers), []), url],
                         capture_output=True, text=True, timeout=30)
    return int(out.stdout)


def test_metrics_behind_a_bearer_token(dirs, tmp_path):
    curl = require_tool("curl")
    prometheus = require_tool("prometheus")
    token_file = tmp_path / "metrics.token"
    token_file.write_text(f"# tokens of the Prometheus servers that scrape this worker\n{TOKEN}\n")
    proc = start_worker(dirs, "--metrics-addr", "127.0.0.1:0", "--metrics-token-file", str(token_file))
    procs = [proc]
    try:
        url = worker_url(proc)
        assert _curl(curl, url + "/metrics") == 401
        assert _curl(curl, url + "/metrics", "Authorization: Bearer wrong-token") == 401
        assert _curl(curl, url + "/metrics", f"Authorization: Bearer {TOKEN}") == 200
        assert _curl(curl, url + "/health") == 200  # open for load balancers and systemd checks
        target = urllib.parse.urlparse(url).netloc
        (tmp_path / "prom.token").write_text(TOKEN + "\n")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
            "  - job_name: guestkit-worker\n    authorization:\n      type: Bearer\n"
            f"      credentials_file: {tmp_path / 'prom.token'}\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
            "  - job_name: no-token\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        prom, port = start_and_find_port([prometheus, f"--config.file={config}",
                                          f"--storage.tsdb.path={tmp_path / 'data'}",
                                          "--web.listen-address=127.0.0.1:0", "--log.level=warn"],
                                         "prometheus")
        procs.append(prom)

        def up():
            out = subprocess.run([curl, "-s", f"http://127.0.0.1:{port}/api/v1/query?query=up"],
                                 capture_output=True, text=True, timeout=30).stdout
            result = json.loads(out)["data"]["result"] if out else []
            got = {r["metric"]["job"]: r["value"][1] for r in result}
            return got if len(got) == 2 else None
        scraped = wait_for(up, timeout=60, what="both scrape jobs tried")
        assert scraped == {"guestkit-worker": "1", "no-token": "0"}
    finally:
        for p in reversed(procs):
            stop(p)


def test_bad_token_file_refused_at_the_door(dirs, tmp_path):
    empty = tmp_path / "empty.token"
    empty.write_text("# nothing\n")
    proc = cli("--once", *dirs.args(), "--metrics-addr", "127.0.0.1:0", "--metrics-token-file", str(empty))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"guestkit-worker: error: --metrics-token-file {empty}: no token in the file")
