"""SIGHUP (``systemctl reload``) reads the token files and TLS certificates of the worker's HTTP
ports again: new tokens and a renewed certificate apply without a restart, the old ones stop
working, and a bad file is logged while what is in use stays.  Real processes, curl and sockets."""

import os
import shutil
import signal
import subprocess

import pytest
from apikit import Pki, call, served  # noqa: F401 (fixture)
from conftest import require_tool, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def replace(path, text):
    """Write a file the way configuration management does: beside it, then renamed over it."""
    tmp = f"{path}.new"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


def curl_code(url, *args):
    out = subprocess.run([require_tool("curl"), "-s", "-o", "/dev/null", "-w", "%{http_code}", *args, url],
                         capture_output=True, text=True, timeout=30)
    return int(out.stdout or 0)


def test_sighup_reloads_the_token_files_of_metrics_and_api(tmp_path, served):  # noqa: F811
    metrics_tokens, api_tokens = tmp_path / "metrics.tokens", tmp_path / "api.tokens"
    replace(metrics_tokens, "# scrapers\nmetrics-token-old\n")
    replace(api_tokens, "api-token-old\n")
    w = served("run", "--metrics-token-file", str(metrics_tokens), "--api-token-file", str(api_tokens),
               metrics=True)
    auth = "Authorization: Bearer {}".format
    assert curl_code(w.metrics_url + "/metrics", "-H", auth("metrics-token-old")) == 200
    assert call(w.url, "GET", "/api/v1/jobs", token="api-token-old").status == 200

    replace(metrics_tokens, "metrics-token-new\nmetrics-token-second\n")
    replace(api_tokens, "api-token-new\n")
    w.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: curl_code(w.metrics_url + "/metrics", "-H", auth("metrics-token-new")) == 200,
             timeout=30, what="the new metrics token accepted")
    wait_for(lambda: call(w.url, "GET", "/api/v1/jobs", token="api-token-new").status == 200,
             timeout=30, what="the new API token accepted")
    assert curl_code(w.metrics_url + "/metrics", "-H", auth("metrics-token-second")) == 200
    assert curl_code(w.metrics_url + "/metrics", "-H", auth("metrics-token-old")) == 401
    assert call(w.url, "GET", "/api/v1/jobs", token="api-token-old").status == 401
    assert "reloaded --metrics-token-file (2 token(s)" in w.log()
    assert "reloaded --api-token-file (1 token(s)" in w.log()

    # a file emptied by mistake: logged, and the tokens in use stay
    replace(metrics_tokens, "# nothing yet\n")
    w.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "cannot reload --metrics-token-file" in w.log(), timeout=30, what="the refusal logged")
    assert curl_code(w.metrics_url + "/metrics", "-H", auth("metrics-token-new")) == 200
    assert call(w.url, "GET", "/api/v1/jobs", token="api-token-new").status == 200
    assert w.proc.poll() is None
    assert "metrics-token-new" not in w.log() and "api-token-new" not in w.log()  # never logged
    assert w.stop() == 0


def test_sighup_renews_the_tls_certificate_of_the_metrics_port(tmp_path, served):  # noqa: F811
    old, new = Pki(tmp_path / "old"), Pki(tmp_path / "new")
    cert, key = str(tmp_path / "metrics.pem"), str(tmp_path / "metrics.key")
    shutil.copy(old.cert, cert)
    shutil.copy(old.key, key)
    w = served("run", "--metrics-tls-cert", cert, "--metrics-tls-key", key, metrics=True)
    url = w.metrics_url + "/health"
    assert url.startswith("https://")
    assert curl_code(url, "--cacert", old.ca) == 200
    assert curl_code(url, "--cacert", new.ca) == 0  # the handshake fails: not signed by that CA

    shutil.copy(new.key, key + ".new")
    shutil.copy(new.cert, cert + ".new")
    os.rename(key + ".new", key)
    os.rename(cert + ".new", cert)
    w.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: curl_code(url, "--cacert", new.ca) == 200, timeout=30,
             what="the renewed certificate served")
    assert curl_code(url, "--cacert", old.ca) == 0
    assert "reloaded --metrics-tls-cert" in w.log()

    # a certificate that does not match its key: logged, the renewed one stays in use
    shutil.copy(old.cert, cert)
    w.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "cannot reload --metrics-tls-cert" in w.log(), timeout=30, what="the refusal logged")
    assert curl_code(url, "--cacert", new.ca) == 200
    assert w.stop() == 0


def test_the_api_gateway_reloads_its_token_file_on_sighup(tmp_path, served):  # noqa: F811
    tokens = tmp_path / "api.tokens"
    replace(tokens, "gateway-token-old\n")
    g = served("api", "--api-token-file", str(tokens))
    assert call(g.url, "GET", "/api/v1/jobs", token="gateway-token-old").status == 200
    replace(tokens, "gateway-token-new\n")
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: call(g.url, "GET", "/api/v1/jobs", token="gateway-token-new").status == 200,
             timeout=30, what="the gateway's new token accepted")
    assert call(g.url, "GET", "/api/v1/jobs", token="gateway-token-old").status == 401
    assert g.proc.poll() is None and "reloaded --api-token-file" in g.log()
