"""REST API front door: tokens, TLS and client certificates, body and header limits, the
connection cap, slow clients and the refusal to listen beyond loopback unprotected.  Every
refusal here happens before the job store is touched."""

import json
import logging
import socket

import pytest
from apikit import Pki, call, raw, write_tokens
from conftest import make_job, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guestkit_worker.api.service import ApiOptions, check_exposure, start_api
from guestkit_worker.handlers import default_registry
from guestkit_worker.http.auth import TokenSet, bearer_token
from guestkit_worker.job.errors import ConfigError

TOKEN = "s3cret-token-for-tests-0123456789"
OTHER = "another-valid-token-abcdefghijkl"


def _healthy():
    return True, {"status": "healthy", "checks": {}}


@pytest.fixture
def api(tmp_path):
    """Factory: start the API in this process with the given options; stopped at the end."""
    started = []

    def factory(transport=None, allow=None, **opts):
        registry = default_registry(load_plugins=False)
        registry.configure_paths(allow or [str(tmp_path)])
        metrics = CollectorRegistry()
        server = start_api(ApiOptions(addr=opts.pop("addr", "127.0.0.1:0"), **opts), transport=transport,
                           registry=registry, allow_paths=allow or [str(tmp_path)], health=_healthy,
                           worker_id="w-test", pool="default", max_concurrent=2, max_job_size=4096,
                           metrics_registry=metrics)
        server.metrics = metrics
        started.append(server)
        return server

    yield factory
    for server in started:
        server.shutdown()


@pytest.fixture
def token_file(tmp_path):
    return write_tokens(tmp_path, TOKEN, OTHER)


def samples(server):
    text = generate_latest(server.metrics).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def count(server, route, method, code):
    key = ("guestkit_api_requests_total", (("code", str(code)), ("method", method), ("route", route)))
    return samples(server).get(key, 0.0)


# -- tokens -------------------------------------------------------------------------------

@pytest.mark.integration
def test_missing_token_is_401_with_challenge(api, token_file):
    server = api(token_file=token_file)
    reply = call(server.url, "GET", "/api/v1/capabilities")
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.json == {"success": False, "error": "UNAUTHORIZED", "message": reply.json["message"]}
    assert count(server, "/api/v1/capabilities", "GET", 401) == 1


@pytest.mark.integration
@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer x",
                                    f"Basic {TOKEN}", f"Bearer{TOKEN}", "Bearer "])
def test_wrong_token_is_401(api, token_file, header):
    server = api(token_file=token_file)
    reply = call(server.url, "GET", "/api/v1/capabilities", headers={"Authorization": header})
    assert reply.status == 401
    assert "Bearer" in reply.headers["www-authenticate"]
    assert TOKEN not in reply.body.decode()


@pytest.mark.integration
@pytest.mark.parametrize("token", [TOKEN, OTHER])
def test_each_token_in_the_file_is_accepted(api, token_file, token):
    server = api(token_file=token_file)
    reply = call(server.url, "GET", "/api/v1/capabilities", token=token)
    assert reply.status == 200
    assert reply.json["data"]["worker_id"] == "w-test"
    reply = call(server.url, "GET", "/api/v1/capabilities", headers={"Authorization": f"bearer  {token}"})
    assert reply.status == 200


@pytest.mark.integration
def test_unauthenticated_requests_learn_nothing_about_routes(api, token_file):
    server = api(token_file=token_file)
    for method, path in [("GET", "/nowhere"), ("DELETE", "/api/v1/capabilities"), ("GET", "/api/v1/jobs/x")]:
        assert call(server.url, method, path).status == 401
    assert call(server.url, "GET", "/nowhere", token=TOKEN).status == 404
    assert call(server.url, "DELETE", "/api/v1/capabilities", token=TOKEN).status == 405


@pytest.mark.integration
def test_unauthenticated_post_is_401_before_the_body_is_read(api, token_file):
    server = api(token_file=token_file)
    head = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n")
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        sock.sendall(head)  # the body never comes
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.0 401") or answer.startswith(b"HTTP/1.1 401")


@pytest.mark.integration
def test_tokens_never_reach_the_log(api, token_file, caplog):
    server = api(token_file=token_file)
    with caplog.at_level(logging.DEBUG):
        call(server.url, "GET", "/api/v1/capabilities", token=TOKEN)
        call(server.url, "GET", "/api/v1/capabilities", token=TOKEN + "wrong")
        call(server.url, "POST", "/api/v1/jobs", doc=make_job(), token=TOKEN + "wrong")
    assert caplog.records, "the requests were logged at DEBUG"
    assert TOKEN not in caplog.text


@pytest.mark.integration
def test_token_file_readable_by_others_is_warned_about(api, token_file, caplog):
    import os
    api(token_file=token_file)  # 0600: no warning
    assert "can be read by its group or others" not in caplog.text
    os.chmod(token_file, 0o644)
    with caplog.at_level(logging.WARNING):
        api(token_file=token_file)
    assert "can be read by its group or others (mode 0644)" in caplog.text and TOKEN not in caplog.text


def test_every_token_is_compared_whichever_matches():
    """Constant time: the presented token's digest is compared with every configured one,
    with no early exit, through a constant-time comparison (hmac.compare_digest by default)."""
    calls = []

    def compare(a, b):
        calls.append((len(a), len(b)))
        return a == b

    tokens = TokenSet(["first-token", "second-token", "third-token"], compare=compare)
    for presented, expected in [("first-token", True), ("third-token", True), ("nope", False),
                                ("x" * 5000, False)]:
        calls.clear()
        assert tokens.accepts(presented) is expected
        assert calls == [(32, 32)] * 3  # equal-length digests, all three compared
    import hmac
    assert TokenSet(["a"])._compare is hmac.compare_digest


def test_token_object_keeps_no_plaintext():
    tokens = TokenSet([TOKEN])
    assert TOKEN not in repr(vars(tokens)) and TOKEN.encode() not in repr(vars(tokens)).encode()


@pytest.mark.parametrize("content, message", [("", "no token"), ("# only a comment\n\n", "no token"),
                                              ("two words\n", "spaces")])
def test_bad_token_files_are_config_errors(tmp_path, content, message):
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        TokenSet.from_file(str(path))
    with pytest.raises(ConfigError, match="No such file"):
        TokenSet.from_file(str(tmp_path / "missing"))


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("BEARER   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("") is None and bearer_token(None) is None


# -- refusing to listen beyond loopback unprotected ----------------------------------------

@pytest.mark.parametrize("addr", ["0.0.0.0:0", "[::]:0", ":8080", "192.0.2.10:80", "example.org:80"])
def test_non_loopback_needs_tokens_and_allow_path(addr, token_file):
    with pytest.raises(ConfigError, match="--api-token-file"):
        check_exposure(ApiOptions(addr=addr), ["/srv/images"])
    with pytest.raises(ConfigError, match="--allow-path"):
        check_exposure(ApiOptions(addr=addr, token_file=token_file), None)
    assert check_exposure(ApiOptions(addr=addr, token_file=token_file), ["/srv/images"])


@pytest.mark.integration
def test_ipv6_loopback(api):
    try:
        server = api(addr="[::1]:0")
    except ConfigError as exc:  # a host without IPv6 on its loopback
        pytest.skip(f"no IPv6 loopback: {exc}")
    assert server.url.startswith("http://[::1]:")
    assert call(server.url, "GET", "/api/v1/health").status == 200


def test_non_loopback_without_tls_is_warned_about(token_file, caplog):
    with caplog.at_level(logging.WARNING):
        check_exposure(ApiOptions(addr="0.0.0.0:0", token_file=token_file), ["/srv"])
    assert "without TLS" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_exposure(ApiOptions(addr="0.0.0.0:0", token_file=token_file, tls_cert="c", tls_key="k"),
                       ["/srv"])
        check_exposure(ApiOptions(addr="127.0.0.1:0"), None)
    assert "without TLS" not in caplog.text


@pytest.mark.parametrize("addr", ["127.0.0.1:0", "127.0.0.2:0", "localhost:0", "[::1]:0"])
def test_loopback_needs_neither(addr):
    assert check_exposure(ApiOptions(addr=addr), None)[1] == 0


# -- media type, length and size -------------------------------------------------------------

@pytest.mark.integration
def test_body_over_the_limit_is_413_before_it_is_read(api):
    server = api()
    head = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n")
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        sock.sendall(head + b"{" * 1000)  # a start of the body; the rest never comes
        sock.settimeout(10)
        answer = sock.recv(65536)
    status, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"] == "PAYLOAD_TOO_LARGE" and body["details"] == {"field": "body", "limit": 4096}
    assert count(server, "/api/v1/jobs", "POST", 413) == 1


@pytest.mark.integration
def test_body_just_over_the_limit_sent_whole_still_gets_its_413(api):
    server = api()
    reply = call(server.url, "POST", "/api/v1/jobs", body=b" " * 4097,
                 headers={"Content-Type": "application/json"})
    assert reply.status == 413


@pytest.mark.integration
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "application/jsonx"])
def test_other_media_types_are_415(api, ctype):
    server = api()
    headers = {"Content-Type": ctype} if ctype else {}
    reply = call(server.url, "POST", "/api/v1/jobs", body=json.dumps(make_job()).encode(), headers=headers)
    assert reply.status == 415
    assert (reply.json["error"] == "UNSUPPORTED_MEDIA_TYPE"
            and reply.json["details"]["field"] == "Content-Type")


@pytest.mark.integration
def test_chunked_body_is_411(api):
    server = api()
    answer = raw(server.url, b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert b" 411 " in answer.split(b"\r\n", 1)[0]


@pytest.mark.integration
@pytest.mark.parametrize("head, code", [(b"X-Pad: " + b"a" * 70000 + b"\r\n", b"431"),
                                        (b"".join(b"X-H%d: v\r\n" % i for i in range(120)), b"431")])
def test_oversized_headers_are_refused(api, head, code):
    server = api()
    answer = raw(server.url, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert answer.split(b"\r\n", 1)[0].split()[1] == code
    assert call(server.url, "GET", "/api/v1/health").status == 200


# -- slow clients and the connection cap ------------------------------------------------

@pytest.mark.integration
def test_body_sent_one_byte_a_second_is_cut_at_the_deadline(api):
    server = api(request_deadline=3)
    body = json.dumps(make_job()).encode()
    head = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        sock.sendall(head)
        sent, answer = 0, b""
        for byte in body[:15]:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            # meanwhile other clients are answered at once
            assert call(server.url, "GET", "/api/v1/health", timeout=5).status == 200
            sock.settimeout(1)
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                continue
            break
    assert 2 <= sent < 15, "the trickling client was cut off at the 3 s deadline"
    assert answer == b"" or b" 408 " in answer.split(b"\r\n", 1)[0]


def _busy_connection(server):
    """A connection whose request has started but never ends: it holds a thread."""
    sock = socket.create_connection((server.host, server.port), timeout=20)
    sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
    return sock


@pytest.mark.integration
def test_connections_beyond_the_cap_get_503_with_retry_after(api):
    server = api(max_connections=3)
    busy = [_busy_connection(server) for _ in range(3)]
    try:
        wait_for(lambda: server.stats()["threads"] >= 3, timeout=10, what="three busy connections")
        answer = raw(server.url, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = answer.partition(b"\r\n\r\n")[0]
        assert b" 503 " in head.split(b"\r\n")[0] and b"Retry-After: 1" in head
        assert samples(server)[("guestkit_api_connections_rejected_total", ())] == 1
    finally:
        for sock in busy:
            sock.close()
    wait_for(lambda: call(server.url, "GET", "/api/v1/health").status == 200, timeout=15,
             what="the server to serve again once the busy clients left")


@pytest.mark.integration
def test_idle_connections_make_room_for_requests(api):
    server = api(max_connections=3)
    idle = [socket.create_connection((server.host, server.port), timeout=20) for _ in range(10)]
    try:
        for _ in range(5):
            assert call(server.url, "GET", "/api/v1/health").status == 200
        assert server.stats()["evicted"] >= 7
    finally:
        for sock in idle:
            sock.close()


# -- TLS and client certificates ----------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.integration
def test_tls_serves_the_api(api, pki):
    server = api(tls_cert=pki.cert, tls_key=pki.key)
    assert server.url.startswith("https://")
    reply = call(server.url, "GET", "/api/v1/capabilities", context=pki.client_context())
    assert reply.status == 200 and reply.json["success"] is True


@pytest.mark.integration
def test_client_certificate_is_required_with_client_ca(api, pki):
    import ssl
    server = api(tls_cert=pki.cert, tls_key=pki.key, client_ca=pki.ca)
    ok = call(server.url, "GET", "/api/v1/capabilities",
              context=pki.client_context(pki.client_cert, pki.client_key))
    assert ok.status == 200
    for context in (pki.client_context(), pki.client_context(pki.stranger_cert, pki.stranger_key)):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            call(server.url, "GET", "/api/v1/capabilities", context=context)
    assert call(server.url, "GET", "/api/v1/capabilities",
                context=pki.client_context(pki.client_cert, pki.client_key)).status == 200


@pytest.mark.integration
def test_tls_option_errors_are_config_errors(tmp_path, pki):
    missing = str(tmp_path / "missing.pem")
    for opts, message in [(dict(tls_cert=pki.cert), "go together"),
                          (dict(client_ca=pki.ca), "needs --api-tls-cert"),
                          (dict(tls_cert=pki.cert, tls_key=pki.key, client_ca=missing), "--api-client-ca")]:
        with pytest.raises(ConfigError, match=message):
            start_api(ApiOptions(addr="127.0.0.1:0", **opts), transport=None,
                      registry=default_registry(False), allow_paths=None, health=_healthy, worker_id="w",
                      pool="p", max_concurrent=1, max_job_size=10, metrics_registry=CollectorRegistry())
