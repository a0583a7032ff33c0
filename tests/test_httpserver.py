"""Tests for guestkit_worker.http.metrics_port: routes, negotiation, errors, TLS, IPv6 and robustness.

Every server binds port 0 on a loopback address and is shut down by the ``serve`` fixture.
"""

import contextlib
import gzip
import http.client
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from guestkit_worker.http import request as http_request
from guestkit_worker.http.listen import parse_addr
from guestkit_worker.http.metrics_port import start_server
from guestkit_worker.job.errors import ConfigError, GuestkitWorkerError

TIMEOUT = 5.0


def _healthy():
    return True, {"status": "ok", "jobs_running": 0}


@pytest.fixture
def registry():
    """A fresh registry with a counter incremented three times and two gauges."""
    reg = CollectorRegistry()
    jobs = Counter("jobs", "Jobs run.", registry=reg)
    for _ in range(3):
        jobs.inc()
    Gauge("queue_depth", "Jobs waiting.", registry=reg).set(7)
    Gauge("disk_free_bytes", "Free bytes.", registry=reg).set(1024)
    return reg


@pytest.fixture
def serve(registry):
    """Factory starting servers on 127.0.0.1:0 (by default) and shutting them all down."""
    started = []

    def factory(addr="127.0.0.1:0", health=_healthy, **kwargs):
        server = start_server(addr, registry=kwargs.pop("registry", registry), health=health,
                              **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.shutdown()


def request(server, path, method="GET", headers=None, body=None, context=None, host=None):
    """One HTTP(S) request; returns (status, headers as a lower-cased dict, body bytes)."""
    host = host or server.host
    if context is not None:
        conn = http.client.HTTPSConnection(host, server.port, timeout=TIMEOUT, context=context)
    else:
        conn = http.client.HTTPConnection(host, server.port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def raw_exchange(server, data):
    """Send raw bytes and end our side, read until the server closes; returns everything received."""
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # no further request: the server closes after answering
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def metric_values(text):
    """{sample name: value} from exposition text."""
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def ipv6_loopback_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# -- parse_addr ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9090", ("127.0.0.1", 9090)),
    ("0.0.0.0:9090", ("0.0.0.0", 9090)),
    ("localhost:0", ("localhost", 0)),
    ("metrics.example.com:65535", ("metrics.example.com", 65535)),
    ("[::]:9090", ("::", 9090)),
    ("[::1]:0", ("::1", 0)),
    (":9090", ("0.0.0.0", 9090)),
])
def test_parse_addr_accepts(text, expected):
    assert parse_addr(text) == expected


@pytest.mark.parametrize("text", [
    "", "9090", "localhost", "host:", "host:port", "host:65536", "host:-1", ":",
    "::1:9090", "[::1]9090", "[::1", "[nothex]:9090", "[127.0.0.1]:80", "999.1.1.1:80",
    "http://host:80", "ho st:80", "a/b:80", None,
])
def test_parse_addr_rejects_garbage_with_clear_message(text):
    with pytest.raises(ConfigError) as info:
        parse_addr(text)
    assert str(info.value).startswith("--metrics-addr: expected HOST:PORT, got ")
    assert isinstance(info.value, GuestkitWorkerError)


# -- /metrics -----------------------------------------------------------------------------

@pytest.mark.integration
def test_metrics_exact_values(serve):
    server = serve()
    status, headers, body = request(server, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    values = metric_values(body.decode())
    assert values["jobs_total"] == 3.0
    assert values["queue_depth"] == 7.0
    assert values["disk_free_bytes"] == 1024.0


@pytest.mark.integration
def test_metrics_reflect_later_changes(serve, registry):
    server = serve()
    gauge = Gauge("late_gauge", "Registered after start.", registry=registry)
    gauge.set(42)
    _, _, body = request(server, "/metrics")
    assert metric_values(body.decode())["late_gauge"] == 42.0


@pytest.mark.integration
def test_metrics_gzip(serve):
    server = serve()
    status, headers, body = request(server, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert metric_values(gzip.decompress(body).decode())["jobs_total"] == 3.0


@pytest.mark.integration
def test_metrics_openmetrics_negotiation(serve):
    server = serve()
    status, headers, body = request(
        server, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert "jobs_total 3.0" in text


@pytest.mark.integration
def test_metrics_name_filter(serve):
    server = serve()
    status, _, body = request(server, "/metrics?name[]=queue_depth")
    assert status == 200
    families = list(text_string_to_metric_families(body.decode()))
    assert [f.name for f in families] == ["queue_depth"]
    assert families[0].samples[0].value == 7.0


@pytest.mark.integration
def test_metrics_head_has_headers_but_no_body(serve):
    server = serve()
    _, _, get_body = request(server, "/metrics")
    reply = raw_exchange(server, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: text/plain" in head
    assert f"Content-Length: {len(get_body)}".encode() in head
    assert rest == b""


# -- /health ------------------------------------------------------------------------------

@pytest.mark.integration
def test_health_ok(serve):
    server = serve(health=lambda: (True, {"status": "ok", "jobs_running": 2}))
    status, headers, body = request(server, "/health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "jobs_running": 2}


@pytest.mark.integration
def test_health_unhealthy_is_503(serve):
    server = serve(health=lambda: (False, {"status": "draining", "reason": "shutdown"}))
    status, headers, body = request(server, "/health")
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "draining", "reason": "shutdown"}


@pytest.mark.integration
def test_health_ignores_query_string(serve):
    server = serve()
    status, _, body = request(server, "/health?verbose=1&x=../../etc/passwd")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "jobs_running": 0}


@pytest.mark.integration
def test_health_raising_gives_503_and_server_survives(serve):
    def broken():
        raise RuntimeError("state file unreadable")

    server = serve(health=broken)
    status, headers, body = request(server, "/health")
    assert status == 503
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert payload["status"] == "error"
    assert "RuntimeError" in payload["error"] and "state file unreadable" in payload["error"]
    assert request(server, "/metrics")[0] == 200


@pytest.mark.integration
def test_health_head_has_no_body(serve):
    server = serve()
    reply = raw_exchange(server, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: application/json" in head
    assert rest == b""


# -- landing page, 404, 405, OPTIONS, garbage -------------------------------------------

@pytest.mark.integration
def test_landing_page_links_both(serve):
    server = serve()
    status, headers, body = request(server, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b'href="/metrics"' in body and b'href="/health"' in body


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/nope", "/metrics/extra", "/etc/passwd", "/../health",
                                  "/favicon.ico"])
def test_unknown_path_is_404(serve, path):
    server = serve()
    status, headers, body = request(server, path)
    assert status == 404
    assert headers["content-type"].startswith("text/plain")
    assert b"not found" in body


@pytest.mark.integration
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(serve, method):
    server = serve()
    status, headers, _ = request(server, "/metrics", method=method, body=b'{"job": 1}')
    assert status == 405
    assert headers["allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.integration
def test_options_lists_allowed_methods(serve):
    server = serve()
    status, headers, body = request(server, "/health", method="OPTIONS")
    assert status in (200, 204)
    assert headers["allow"] == "GET, HEAD, OPTIONS"
    assert body == b""


@pytest.mark.integration
@pytest.mark.parametrize("line", [b"\x16\x03\x01 garbage\x00 NOT-HTTP", b"GARBAGE",
                                  b"GET / HTTP/1.1 extra", b"GET / HTTP/x.y"])
def test_garbage_request_line_is_400(serve, line):
    server = serve()
    reply = raw_exchange(server, line + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert request(server, "/health")[0] == 200


@pytest.mark.integration
def test_100k_url_is_rejected_and_server_keeps_answering(serve):
    server = serve()
    reply = raw_exchange(server, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.split(b" ", 2)[1] in (b"414", b"400")
    status, _, body = request(server, "/metrics")
    assert status == 200
    assert metric_values(body.decode())["jobs_total"] == 3.0


@pytest.mark.integration
def test_idle_connections_do_not_block_a_scrape(serve):
    server = serve()
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection((server.host, server.port),
                                                             timeout=TIMEOUT))
                for _ in range(100)]
        status, _, body = request(server, "/metrics")
        assert status == 200
        assert metric_values(body.decode())["jobs_total"] == 3.0
        assert len(idle) == 100
        # The newest idle sockets are still open: the server has neither answered nor closed
        # them (the oldest made room for the scrape: at most 64 connections are kept).
        for sock in idle[-5:]:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)


def _wait_for_server_close(sock):
    """Block (bounded by the socket timeout) until the server closes; returns seconds waited."""
    start = time.monotonic()
    assert sock.recv(65536) == b""
    return time.monotonic() - start


@pytest.mark.integration
def test_idle_connection_is_dropped_after_timeout(serve, monkeypatch):
    monkeypatch.setattr(http_request, "CONNECTION_TIMEOUT", 0.2)
    server = serve()
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        assert _wait_for_server_close(sock) < TIMEOUT
    assert request(server, "/health")[0] == 200


@pytest.mark.integration
def test_trickling_client_is_dropped_at_request_deadline(serve, monkeypatch):
    monkeypatch.setattr(http_request, "REQUEST_DEADLINE", 0.3)
    server = serve()
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        # An unfinished request line: the 10 s per-read timeout alone would keep waiting.
        sock.sendall(b"GET /metr")
        assert _wait_for_server_close(sock) < TIMEOUT
    assert request(server, "/health")[0] == 200


@pytest.mark.integration
def test_broken_collector_gives_500_and_server_survives(serve, caplog):
    class Broken:
        def collect(self):
            raise ValueError("collector broke")

    bad_registry = CollectorRegistry()
    bad_registry.register(Broken())
    server = serve(registry=bad_registry)
    status, _, _ = request(server, "/metrics")
    assert status == 500
    assert "collector broke" in caplog.text  # logged before the 500 was sent
    assert request(server, "/health")[0] == 200


@pytest.mark.integration
@pytest.mark.parametrize("head, code", [
    (b"GET / HTTP/1.1\r\n" + b"X-Many: y\r\n" * 200, b"431"),
    (b"GET / HTTP/1.1\r\nX-Long: " + b"y" * 70_000 + b"\r\n", b"431"),
])
def test_oversized_headers_are_rejected(serve, head, code):
    server = serve()
    reply = raw_exchange(server, head + b"\r\n")
    assert reply.split(b" ", 2)[1] == code
    assert request(server, "/health")[0] == 200


# -- binding ------------------------------------------------------------------------------

@pytest.mark.integration
def test_port_is_reported_and_url_built(serve):
    server = serve()
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


@pytest.mark.integration
def test_port_in_use_is_config_error_before_any_thread(registry):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        threads_before = threading.active_count()
        with pytest.raises(ConfigError) as info:
            start_server(f"127.0.0.1:{port}", registry=registry, health=_healthy)
        assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
        assert threading.active_count() == threads_before


@pytest.mark.integration
def test_tuple_address_is_accepted(serve):
    server = serve(("127.0.0.1", 0))
    assert request(server, "/health")[0] == 200


@pytest.mark.integration
def test_shutdown_closes_the_port(registry):
    server = start_server("127.0.0.1:0", registry=registry, health=_healthy)
    assert request(server, "/health")[0] == 200
    server.shutdown()
    server.shutdown()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=TIMEOUT).close()


@pytest.mark.integration
@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 loopback not available here")
def test_ipv6_loopback(serve):
    server = serve("[::1]:0")
    assert server.host == "::1"
    assert server.url == f"http://[::1]:{server.port}"
    status, _, body = request(server, "/metrics")
    assert status == 200
    assert metric_values(body.decode())["jobs_total"] == 3.0


@pytest.mark.integration
@pytest.mark.skipif(not ipv6_loopback_available(), reason="IPv6 not available here")
def test_dual_stack_answers_on_ipv4(serve):
    server = serve("[::]:0")
    status, _, body = request(server, "/health", host="127.0.0.1")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    assert request(server, "/health", host="::1")[0] == 200


# -- TLS ----------------------------------------------------------------------------------

@pytest.fixture
def tls_files(tmp_path):
    """A self-signed certificate and key for CN=localhost, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is required for the TLS tests in CI")
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-subj", "/CN=localhost", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def _client_context(cert):
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False  # the cert says localhost; we connect to 127.0.0.1
    return context


@pytest.mark.integration
def test_tls_serves_metrics(serve, tls_files):
    cert, key = tls_files
    server = serve(tls_cert=cert, tls_key=key)
    assert server.url == f"https://127.0.0.1:{server.port}"
    status, _, body = request(server, "/metrics", context=_client_context(cert))
    assert status == 200
    assert metric_values(body.decode())["jobs_total"] == 3.0


@pytest.mark.integration
def test_tls_stalled_handshake_does_not_block_others(serve, tls_files):
    cert, key = tls_files
    server = serve(tls_cert=cert, tls_key=key)
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT):
        # This client never sends a ClientHello; another client must still be served.
        status, _, body = request(server, "/health", context=_client_context(cert))
    assert status == 200
    assert json.loads(body)["status"] == "ok"


@pytest.mark.integration
def test_tls_rejects_plain_http_and_keeps_serving(serve, tls_files):
    cert, key = tls_files
    server = serve(tls_cert=cert, tls_key=key)
    reply = raw_exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"jobs_total" not in reply
    assert request(server, "/health", context=_client_context(cert))[0] == 200


def test_tls_bad_paths_are_config_errors(registry, tmp_path):
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="cannot load metrics TLS certificate"):
        start_server("127.0.0.1:0", registry=registry, health=_healthy,
                     tls_cert=missing, tls_key=missing)
    with pytest.raises(ConfigError, match="both a certificate and a key"):
        start_server("127.0.0.1:0", registry=registry, health=_healthy, tls_cert=missing)


# -- logging ------------------------------------------------------------------------------

@pytest.mark.integration
def test_request_log_goes_to_logger_not_stderr(serve, caplog, capfd):
    logged = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record):
            if "/health?probe=1" in record.getMessage():
                logged.set()

    caplog.set_level(logging.DEBUG, logger="guestkit_worker.http.request")
    # Root handlers run in order, so this one fires after caplog's has stored the record.
    log = logging.getLogger()
    signal = Signal(level=logging.DEBUG)
    log.addHandler(signal)
    try:
        server = serve()
        capfd.readouterr()
        assert request(server, "/health?probe=1")[0] == 200
        assert logged.wait(TIMEOUT)
    finally:
        log.removeHandler(signal)
    records = [r for r in caplog.records if "/health?probe=1" in r.getMessage()]
    assert records and records[0].levelno == logging.DEBUG
    assert "200" in records[0].getMessage()
    out, err = capfd.readouterr()
    assert err == "" and out == ""
