"""HTTP/1.1 persistent connections on the bounded server: several requests on one
real socket, pipelined and half-sent requests, the cases that close, and the limits that still
hold (request deadline, idle timeout, threads, the longest-idle connection making room)."""

import contextlib
import http.client
import socket
import subprocess
import time

import pytest
from conftest import require_tool, wait_for

from guestkit_worker.http import request as http_request
from guestkit_worker.http.server import serve_wsgi

pytestmark = pytest.mark.integration

TIMEOUT = 10


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/fail":
        raise RuntimeError("the app broke")
    if path == "/unread":  # answers before reading the body (like a 413)
        body = b"too large\n"
        start_response("413 Payload Too Large", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/nolength":  # two pieces, no Content-Length: the length is not known
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"one ", b"two\n"]
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    body = b"got " + data + b"\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def server():
    with serve_wsgi(_app, "127.0.0.1:0", max_connections=8) as service:
        yield service


class Client:
    """One raw connection reading answers one at a time (status, headers, body)."""

    def __init__(self, service):
        self.sock = socket.create_connection((service.host, service.port), timeout=TIMEOUT)
        self.stream = self.sock.makefile("rb")

    def answer(self):
        status = self.stream.readline()
        assert status, "the server closed instead of answering"
        headers = {}
        for line in iter(self.stream.readline, b"\r\n"):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = self.stream.read(int(headers["content-length"]))
        else:
            body = self.stream.read()
        return status.decode().split(" ", 2)[:2], headers, body

    def closed_by_server(self):
        """True when the server closed its side (EOF), bounded by the socket timeout."""
        return self.stream.read(1) == b""

    def close(self):
        self.stream.close()
        self.sock.close()


@contextlib.contextmanager
def client(service):
    c = Client(service)
    try:
        yield c
    finally:
        c.close()


def _post(path, body, extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body) + extra
            + b"\r\n" + body)


def test_three_requests_share_one_connection(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
    try:
        for i in range(3):
            conn.request("POST", "/echo", body=b"n%d" % i)
            resp = conn.getresponse()
            assert (resp.status, resp.read(), resp.version) == (200, b"got n%d\n" % i, 11)
            assert resp.getheader("Connection") is None
        sock = conn.sock
        conn.request("GET", "/")
        conn.getresponse().read()
        assert conn.sock is sock, "http.client opened a second socket"
    finally:
        conn.close()
    # the server counts a request once its thread is done with it, maybe after the client read it
    stats = wait_for(lambda: server.stats()["requests"] == 4 and server.stats(), timeout=TIMEOUT,
                     what="4 requests")
    assert stats["accepted"] == 1, stats  # one connection (parked or served on at once between requests)


def test_curl_reuses_the_connection(server):
    out = subprocess.run([require_tool("curl"), "-sS", "-v", "--max-time", "20",
                          server.url + "/a", server.url + "/b"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "got \ngot \n"
    assert "Re-using existing connection" in out.stderr or "Reusing existing" in out.stderr, out.stderr
    assert server.stats()["accepted"] == 1


@pytest.mark.parametrize("version, connection, kept, says", [
    (b"HTTP/1.1", b"", True, None),
    (b"HTTP/1.1", b"Connection: close\r\n", False, "close"),
    (b"HTTP/1.0", b"", False, "close"),
    (b"HTTP/1.0", b"Connection: keep-alive\r\n", True, "keep-alive"),
])
def test_connection_header_and_version_decide(server, version, connection, kept, says):
    with client(server) as c:
        c.sock.sendall(b"GET / " + version + b"\r\nHost: x\r\n" + connection + b"\r\n")
        (proto, status), headers, body = c.answer()
        assert (proto, status, body) == (version.decode(), "200", b"got \n")
        assert headers.get("connection") == says
        if kept:
            c.sock.sendall(b"GET /again " + version + b"\r\nHost: x\r\n" + connection + b"\r\n")
            assert c.answer()[0][1] == "200"
        else:
            assert c.closed_by_server()


def test_pipelined_requests_are_answered_in_order(server):
    with client(server) as c:
        c.sock.sendall(_post(b"/1", b"first") + _post(b"/2", b"second")
                       + b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [c.answer()[2] for _ in range(3)] == [b"got first\n", b"got second\n", b"got \n"]
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed_by_server()
    wait_for(lambda: server.stats()["requests"] == 3, timeout=TIMEOUT, what="3 requests counted")
    assert server.stats()["accepted"] == 1


def test_half_sent_next_request_waits_for_its_rest(server):
    with client(server) as c:
        nxt = _post(b"/2", b"second")
        c.sock.sendall(_post(b"/1", b"first") + nxt[:20])
        assert c.answer()[2] == b"got first\n"
        time.sleep(0.2)  # the rest comes later, as from a slow network
        c.sock.sendall(nxt[20:])
        assert c.answer()[2] == b"got second\n"


def test_client_closing_mid_request_frees_its_slot(server):
    with client(server) as c:
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.answer()[0][1] == "200"
        c.sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    wait_for(lambda: server.stats()["open"] == 0, timeout=TIMEOUT, what="the half-sent request's slot freed")
    with client(server) as c:
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.answer()[0][1] == "200"


def test_slowloris_on_a_kept_connection_is_cut_at_the_request_deadline(server, monkeypatch):
    monkeypatch.setattr(http_request, "REQUEST_DEADLINE", 0.5)
    with client(server) as c:
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.answer()[0][1] == "200"
        start = time.monotonic()
        cut = False
        for byte in b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"y" * 200:
            try:
                c.sock.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            time.sleep(0.05)
            c.sock.setblocking(False)
            try:
                cut = c.sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                cut = True
            finally:
                c.sock.settimeout(TIMEOUT)
            if cut:
                break
        assert cut, "the trickling request was never cut"
        assert time.monotonic() - start < 5


def test_idle_kept_connection_expires(server, monkeypatch):
    monkeypatch.setattr(http_request, "CONNECTION_TIMEOUT", 0.3)
    with client(server) as c:
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.answer()[0][1] == "200"
        assert c.closed_by_server()
    assert server.stats()["expired"] == 1


@pytest.mark.parametrize("request_bytes, status", [
    (_post(b"/unread", b"x" * 1000), "413"),      # body not read by the app
    (b"GET /nolength HTTP/1.1\r\nHost: x\r\n\r\n", "200"),  # no Content-Length in the answer
    (b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n", "500"),      # the app failed
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "200"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 200 + b"\r\n", "431"),
])
def test_answers_that_end_the_connection(server, request_bytes, status, caplog):
    with client(server) as c:
        c.sock.sendall(request_bytes)
        (_proto, got), headers, _body = c.answer()
        assert got == status and headers.get("connection") == "close"
        assert c.closed_by_server()
    with client(server) as c:  # and the server goes on
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.answer()[0][1] == "200"


def test_connection_closed_after_max_requests():
    with serve_wsgi(_app, "127.0.0.1:0", max_requests=3) as service, client(service) as c:
        for i in range(3):
            c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            _status, headers, _body = c.answer()
            assert headers.get("connection") == ("close" if i == 2 else None)
        assert c.closed_by_server()


def test_a_connection_being_served_at_shutdown_ends_after_its_current_answer():
    """Three pipelined requests; shutdown() while the first is being answered: that answer
    comes whole, says Connection: close, and the connection ends; the other two are not
    answered (the connection does not go on to its 1,000-request limit)."""
    import threading
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        entered.set()
        release.wait(TIMEOUT)
        return _app(environ, start_response)

    service = serve_wsgi(app, "127.0.0.1:0", max_connections=4)
    try:
        with client(service) as c:
            c.sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            assert entered.wait(TIMEOUT)
            service.shutdown()
            release.set()
            (_version, code), headers, body = c.answer()
            assert (code, headers.get("connection"), body) == ("200", "close", b"got \n")
            assert c.closed_by_server()
    finally:
        release.set()
        service.shutdown()


def test_idle_kept_connections_hold_no_thread_and_make_room():
    """200 keep-alive connections, each after one answer: at most max_connections threads and
    sockets; the longest-idle kept connections were closed to make room for newcomers."""
    with serve_wsgi(_app, "127.0.0.1:0", max_connections=16) as service, contextlib.ExitStack() as stack:
        clients = []
        for _ in range(200):
            c = Client(service)
            stack.callback(c.close)
            c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.answer()[0][1] == "200"
            clients.append(c)
        stats = service.stats()
        assert stats["threads"] <= 16 and stats["open"] <= 16, stats
        assert stats["evicted"] >= 184, stats
        assert clients[0].closed_by_server()
        last = clients[-1]
        last.sock.sendall(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        assert last.answer()[2] == b"got \n"
