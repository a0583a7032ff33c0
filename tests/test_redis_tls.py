"""The Redis transport over TLS (``rediss://``) against a real redis-server built with TLS,
certificates made by openssl (apikit.Pki): jobs complete with the right CA (and client
certificate when the server requires one); the wrong CA, a missing or foreign client
certificate, a plain client on the TLS port and a TLS client on a plain port are configuration
errors (exit 2, one line naming the URL without its password), never an endless wait."""

import json
import os
import tempfile

import pytest
from apikit import Pki
from conftest import cli, make_job, worker_env
from redisfixture import require_redis_py, start_redis, stored_result, submit_and_run_once
from test_door import _one_clean_line

pytestmark = pytest.mark.integration

SECRET = "tls-Pa55word"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("redis-pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki):
    require_redis_py()
    server = start_redis(tmp_path_factory.mktemp("redis-tls"), tls=pki)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, pki):
    """A TLS Redis that requires a client certificate signed by the Pki's CA."""
    require_redis_py()
    server = start_redis(tmp_path_factory.mktemp("redis-mtls"), tls=pki, auth_clients=True)
    yield server
    server.stop()


def with_password(url):
    return url.replace("rediss://", f"rediss://:{SECRET}@").replace("redis://", f"redis://:{SECRET}@")


def run_once(url, *args, env=None):
    """``run --once`` on url expected to stop before any job: its work dir is never made."""
    with tempfile.TemporaryDirectory() as tmp:
        return cli("run", "--once", "--transport", "redis", "--redis-url", url, "--metrics-enabled", "false",
                   "--work-dir", os.path.join(tmp, "work"), *args, env=env, timeout=120)


def test_a_job_completes_over_rediss_with_the_ca_given(tls_server, pki, tmp_path, pool):
    """The CA from the environment (the flag: the next test)."""
    env = worker_env(GUESTKIT_WORKER_REDIS_TLS_CA_FILE=pki.ca)
    submitted, ran = submit_and_run_once(tmp_path, pool, "tls-job-0001", ["--redis-url", tls_server.url],
                                         env=env)
    assert submitted.returncode == 0 and ran.returncode == 0, submitted.stderr + ran.stderr
    assert f"at {tls_server.url}" in ran.stderr
    result = stored_result(tls_server.client(), pool, "tls-job-0001")
    assert result["status"] == "completed" and result["data"]["message"] == f"over {tls_server.url}", result


def test_a_client_certificate_when_the_server_requires_one(mtls_server, pki, tmp_path, pool):
    where = ["--redis-url", mtls_server.url, "--redis-tls-ca-file", pki.ca,
             "--redis-tls-cert-file", pki.client_cert, "--redis-tls-key-file", pki.client_key]
    submitted, ran = submit_and_run_once(tmp_path, pool, "mtls-job-0001", where)
    assert submitted.returncode == 0 and ran.returncode == 0, submitted.stderr + ran.stderr
    assert stored_result(mtls_server.client(), pool, "mtls-job-0001")["status"] == "completed"
    url = with_password(mtls_server.url)
    for cert, key, cause in ((None, None, "CERTIFICATE_REQUIRED"),
                             (pki.stranger_cert, pki.stranger_key, "UNKNOWN_CA")):
        args = ["--redis-tls-ca-file", pki.ca] + (["--redis-tls-cert-file", cert, "--redis-tls-key-file", key]
                                                  if cert else [])
        line = _one_clean_line(run_once(url, *args))
        assert line.startswith(f"guestkit-worker: error: redis at {mtls_server.url}: the server refused "
                               f"the TLS handshake (TLSV"), line
        assert cause in line and "--redis-tls-cert-file" in line and SECRET not in line, line


def test_a_server_certificate_from_another_ca_is_a_config_error(tls_server, pki, tmp_path, pool):
    url = with_password(tls_server.url)
    ran = run_once(url, "--redis-tls-ca-file", pki.other_ca, "--pool", pool)
    line = _one_clean_line(ran)
    assert line == (f"guestkit-worker: error: redis at {tls_server.url}: the server's TLS certificate failed "
                    "verification (self-signed certificate in certificate chain); give the CA that signed it "
                    "with --redis-tls-ca-file"), line
    assert SECRET not in ran.stderr
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("tls-wrong-ca-01")))
    for command in (["submit", str(job)], ["status", "tls-wrong-ca-01"]):
        p = cli(*command, "--transport", "redis", "--redis-url", url, "--pool", pool, timeout=60,
                env=worker_env(GUESTKIT_WORKER_REDIS_TLS_CA_FILE=pki.other_ca))
        assert "failed verification" in _one_clean_line(p) and SECRET not in p.stderr, p.stderr
    assert tls_server.client().exists(f"guestkit:{{{pool}}}:jobs") == 0  # nothing queued


def test_the_system_store_does_not_trust_a_private_ca(tls_server, pool):
    line = _one_clean_line(run_once(tls_server.url, "--pool", pool))
    assert "the server's TLS certificate failed verification" in line, line


def test_a_plain_client_on_the_tls_port_is_told_to_use_rediss(tls_server, pool):
    plain = with_password(tls_server.url.replace("rediss://", "redis://"))
    p = run_once(plain, "--pool", pool)
    plain_url = tls_server.url.replace("rediss", "redis")
    assert _one_clean_line(p) == (f"guestkit-worker: error: redis at {plain_url}: "
                                  "the server speaks TLS: use a rediss:// URL (and --redis-tls-ca-file)")
    assert SECRET not in p.stderr


def test_a_tls_client_on_a_plain_port_is_told_to_use_redis(redis_server, pki, pool):
    tls_url = redis_server.url.replace("redis://", "rediss://")
    line = _one_clean_line(run_once(tls_url, "--redis-tls-ca-file", pki.ca, "--pool", pool))
    assert line == (f"guestkit-worker: error: redis at {tls_url}: the server speaks plain Redis, not TLS: "
                    "use a redis:// URL"), line


def test_tls_files_need_rediss_and_must_be_usable(pki, tmp_path):
    """Refused at the door, before any connection (no server listens on port 9)."""
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        ("redis://127.0.0.1:9/0", ["--redis-tls-ca-file", pki.ca], {},
         "need a rediss:// --redis-url (TLS), got redis://127.0.0.1:9/0"),
        ("unix:///run/redis.sock", [], {"GUESTKIT_WORKER_REDIS_TLS_CERT_FILE": pki.client_cert},
         "need a rediss:// --redis-url (TLS), got unix:///run/redis.sock"),
        ("rediss://127.0.0.1:9/0", [], {"GUESTKIT_WORKER_REDIS_TLS_CA_FILE": str(tmp_path / "none")},
         f"--redis-tls-ca-file {tmp_path / 'none'}: no such file"),
        ("rediss://127.0.0.1:9/0", ["--redis-tls-ca-file", str(not_pem)], {},
         f"--redis-tls-ca-file {not_pem}: not a usable CA file"),
        ("rediss://127.0.0.1:9/0", ["--redis-tls-key-file", pki.client_key], {},
         "--redis-tls-key-file needs --redis-tls-cert-file"),
        ("rediss://127.0.0.1:9/0", ["--redis-tls-cert-file", pki.client_cert, "--redis-tls-key-file",
                                    pki.stranger_key], {},
         f"--redis-tls-cert-file {pki.client_cert}: not a usable client certificate and key "
         "(KEY_VALUES_MISMATCH)"),
    ]
    for url, args, env, words in cases:
        line = _one_clean_line(run_once(url, *args, env=worker_env(**env)))
        assert words in line, (url, args, line)


def test_after_a_first_round_trip_the_same_symptom_is_an_outage(tmp_path, pki, pool):
    """A worker that has talked to its Redis over TLS rides out a server that now speaks plain
    Redis on that port (TransportUnavailable, /health failing) instead of stopping; a new
    transport is told at once."""
    from redisfixture import RedisServer

    from guestkit_worker.job.errors import ConfigError
    from guestkit_worker.transports.base import TransportUnavailable
    from guestkit_worker.transports.redis import RedisTransport
    tls = start_redis(tmp_path / "tls", tls=pki)
    t = RedisTransport(tls.url, "outage-w1", pool=pool, tls_ca_file=pki.ca)
    plain = None
    try:
        t.open()
        assert t.submit(make_job("tls-outage-001")).outcome == "created"
        tls.stop()
        plain = RedisServer(tmp_path / "plain", port=tls.port).start()
        t.link.r.connection_pool.disconnect()
        with pytest.raises(TransportUnavailable):
            t.job_status("tls-outage-001")
        assert t.health()["transport"][0] is False
        with pytest.raises(ConfigError, match="speaks plain Redis"):
            RedisTransport(tls.url, "outage-w2", pool=pool, tls_ca_file=pki.ca).open()
    finally:
        t.close()
        tls.stop()
        if plain:
            plain.stop()


def test_a_worker_started_before_its_tls_redis_waits_for_it(tmp_path, pki, pool):
    """Nobody listening yet (connection refused) is no configuration error: open() waits."""
    import threading

    from redisfixture import RedisServer

    from guestkit_worker.transports.redis import RedisTransport
    server = RedisServer(tmp_path / "redis", tls=pki)  # its port chosen, not started
    t = RedisTransport(server.url, "tls-early-bird", pool=pool, tls_ca_file=pki.ca)
    opened = threading.Thread(target=t.open, daemon=True)
    opened.start()
    try:
        opened.join(1.5)
        assert opened.is_alive()  # still retrying, not failed
        server.start()
        opened.join(30)
        assert not opened.is_alive() and t.health()["transport"] == (True, f"redis at {server.url} reachable")
    finally:
        t.close()
        server.stop()


def test_a_server_certificate_for_another_host_is_a_config_error(tmp_path, pki, pool):
    """The right CA, but the server's certificate names redis.elsewhere.example only while the
    URL says 127.0.0.1: the host name is checked (a trusted certificate stolen from another
    host does not do), exit 2 naming the mismatch, not the CA."""
    import types
    cert, key = pki._signed("elsewhere", "/CN=redis.elsewhere.example",
                            "subjectAltName=DNS:redis.elsewhere.example")
    listen = types.SimpleNamespace(cert=cert, key=key, ca=pki.ca, client_cert=None, client_key=None,
                                   client_context=pki.client_context, server_name="redis.elsewhere.example")
    server = start_redis(tmp_path / "redis-elsewhere", tls=listen)
    try:
        ran = run_once(with_password(server.url), "--redis-tls-ca-file", pki.ca, "--pool", pool)
        line = _one_clean_line(ran)
        assert line == (f"guestkit-worker: error: redis at {server.url}: the server's TLS certificate failed "
                        "verification (IP address mismatch, certificate is not valid for '127.0.0.1'); use a "
                        "host name or address in --redis-url that the certificate names "
                        "(its subjectAltName)"), line
        assert SECRET not in ran.stderr
    finally:
        server.stop()
