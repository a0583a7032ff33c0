"""Who gets a connection slot of the HTTP ports (REST API and metrics) when they are all taken,
against real worker processes over real sockets: a burst of clients beyond the limits gets
answers, never resets, the CLI's --wait rides out a busy API, and slow senders from one
address (plain or TLS) cannot lock other clients out."""

import collections
import json
import select
import socket
import struct
import threading
import time

import pytest
from apikit import call, served, write_tokens  # noqa: F401 (fixture)
from conftest import cli, make_job, wait_for

pytestmark = pytest.mark.integration

JOBS = "/api/v1/jobs"
TOKEN = "slots-token-0123456789abcdef"
#: slow senders per port: more than the 64 slots of each
TRICKLERS = 80
#: concurrent result?wait= calls of the burst
BURST = 400


def _burst(url, path, n, timeout=90):
    """``n`` GETs of ``path`` started at once, each on its own connection; a Counter of
    outcomes: (status, Retry-After) for answers, the exception's class name otherwise."""
    outcomes, lock = collections.Counter(), threading.Lock()
    start = threading.Barrier(n, timeout=60)

    def one():
        try:
            start.wait()
            reply = call(url, "GET", path, timeout=timeout)
            key = (reply.status, reply.headers.get("retry-after"))
        except Exception as exc:  # a reset, an EOF without an answer, a timeout: counted
            key = type(exc).__name__
        with lock:
            outcomes[key] += 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 90)
    assert not any(t.is_alive() for t in threads), "a client of the burst never finished"
    return outcomes


def test_a_burst_of_waiting_clients_gets_200_or_503_never_a_reset(dirs, served):
    """Of 400 concurrent result?wait calls, each gets 200 (the job's result) or 503 with
    Retry-After, never a ConnectionResetError (a refused or evicted connection closed with its
    request unread)."""
    worker = served("run", "--api-max-connections", "16", "--api-max-waits", "8")
    doc = make_job("job-burst-wait", operation="test.sleep", data={"seconds": 3})
    assert call(worker.url, "POST", JOBS, doc=doc).status == 202
    outcomes = _burst(worker.url, f"{JOBS}/job-burst-wait/result?wait=30", BURST)
    assert sum(outcomes.values()) == BURST
    assert set(outcomes) <= {(200, None), (503, "1")}, outcomes
    assert outcomes[(200, None)] >= 1, outcomes


class _Tricklers:
    """``n`` clients from 127.0.0.2, each sending an endless request head to ``url`` one byte a
    second and connecting again whenever the server answers or closes."""

    def __init__(self, url, n):
        host, _, port = url.partition("://")[2].rpartition(":")
        self.addr = (host, int(port))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.bytes_sent = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for thread in self.threads:
            thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.2", 0))
                    sock.settimeout(5)
                    sock.connect(self.addr)
                    with self.lock:
                        self.connections += 1
                    self._trickle(sock)
            except OSError:
                pass
            self.stop.wait(0.2)

    def _trickle(self, sock):
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 1000
        sock.settimeout(1.0)
        for byte in head:
            if self.stop.is_set():
                return
            sock.sendall(bytes([byte]))
            with self.lock:
                self.bytes_sent += 1
            try:
                sock.recv(4096)  # an answer (503) or the server's close: this one is over
                return
            except TimeoutError:  # a second without news: the next byte
                continue

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def test_slow_senders_from_one_address_cannot_lock_out_other_clients(dirs, served, tmp_path):
    """80 connections from 127.0.0.2 sending a header byte a second on the API port, and 80 on
    the metrics port (enough to hold every slot of a port for the 30 s request deadline, again
    and again), lock no one else out: GET /health, a scrape of /metrics and an authorized API
    call from 127.0.0.1 each get 200 promptly, again and again through the attack."""
    tokens = write_tokens(tmp_path, TOKEN)
    worker = served("run", "--api-token-file", tokens, metrics=True)
    attacks = [_Tricklers(worker.url, TRICKLERS), _Tricklers(worker.metrics_url, TRICKLERS)]
    try:
        for attack in attacks:  # every sender has connected and sent its first bytes
            wait_for(lambda attack=attack: attack.bytes_sent >= 3 * TRICKLERS, timeout=60,
                     what="the slow senders")
        end = time.monotonic() + 12  # beyond the header deadline: senders cut and back again
        rounds = 0
        while time.monotonic() < end or rounds < 4:
            for url, path, token in ((worker.metrics_url, "/health", None),
                                     (worker.metrics_url, "/metrics", None),
                                     (worker.url, JOBS, TOKEN)):
                started = time.monotonic()
                reply = call(url, "GET", path, token=token, timeout=10)
                took = time.monotonic() - started
                assert reply.status == 200, (rounds, path, reply)
                assert took < 10, (rounds, path, took)
            rounds += 1
            time.sleep(0.5)
        assert all(attack.connections > TRICKLERS for attack in attacks), "the senders were cut and came back"
    finally:
        for attack in attacks:
            attack.close()
    assert call(worker.url, "GET", JOBS, token=TOKEN).status == 200


# -- the CLI's --wait when the API is busy -------------------------------------------------

class _ResetFirst:
    """A TCP relay from 127.0.0.1 to ``url``: the first ``resets`` connections have their
    request read and are then reset (as a busy server's lost answer looks to a client); later
    ones are relayed both ways."""

    def __init__(self, url, resets):
        host, _, port = url.partition("://")[2].rpartition(":")
        self.target = (host, int(port))
        self.resets = resets
        self.done = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(30)
            if self.done < self.resets:
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # with SO_LINGER 0: a reset instead of an end of stream
                self.done += 1
                continue
            upstream = socket.create_connection(self.target, timeout=30)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            for chunk in iter(lambda: src.recv(65536), b""):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.listener.close()


def test_cli_wait_rides_out_a_reset(dirs, served):
    """When a busy server's answer is lost to a reset, ``result --wait`` asks again after a
    pause, as after a 503, and prints the result (it does not exit 6 with "unavailable: ...
    Connection reset by peer")."""
    worker = served("run")
    assert call(worker.url, "POST", JOBS, doc=make_job("job-cli-reset")).status == 202
    relay = _ResetFirst(worker.url, resets=2)
    try:
        proc = cli("result", "job-cli-reset", "--api", relay.url, "--wait", "30", timeout=60)
    finally:
        relay.close()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dirs.result("job-cli-reset")
    assert relay.done == 2


def _hold_the_only_slot(url):
    """A connection that has begun a request and holds the API's one slot, and the 503 a
    probe got meanwhile (the holder silent: it was not refused or pushed out itself)."""
    host, _, port = url.partition("://")[2].rpartition(":")
    for _ in range(100):
        holder = socket.create_connection((host, int(port)), timeout=30)
        holder.sendall(b"GET /api/v1/health HTTP/1.1\r\n")  # a request begun: the slot is busy
        probe = call(url, "GET", "/api/v1/health")
        if probe.status == 503 and not select.select([holder], [], [], 0)[0]:
            return holder, probe
        holder.close()  # the slot was not free yet, or the probe came first: again
    raise AssertionError("could not hold the API's only connection slot")


def test_cli_wait_rides_out_a_busy_connection_slot(dirs, served):
    """On a 503 TOO_MANY_CONNECTIONS (every connection slot busy), as on too many waiting
    clients, ``result --wait`` asks again after a pause and prints the result once a slot is
    free (it does not exit 6)."""
    worker = served("run", "--api-max-connections", "1")
    assert call(worker.url, "POST", JOBS, doc=make_job("job-cli-busy")).status == 202
    wait_for(lambda: call(worker.url, "GET", f"{JOBS}/job-cli-busy/result").status == 200, timeout=60,
             what="the job's result (a 503 while the last call's slot is not free yet)")
    holder, refused = _hold_the_only_slot(worker.url)
    with holder:
        assert refused.json["error"] == "TOO_MANY_CONNECTIONS" and refused.headers["retry-after"] == "1"
        release = threading.Timer(2.0, holder.shutdown, args=(socket.SHUT_WR,))  # the slot frees in 2 s
        release.start()
        try:
            proc = cli("result", "job-cli-busy", "--api", worker.url, "--wait", "30", timeout=60)
        finally:
            release.cancel()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dirs.result("job-cli-busy")


# -- TLS: a handshake or head sent slowly makes room too ---------------------------------

def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"hi\n"]


def _stuck(server, pki, kind):
    """A TLS connection from 127.0.0.2 that never finishes its handshake or its head."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.2", 0))
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    if kind == "handshake":
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello begun
        return sock
    sock = pki.client_context().wrap_socket(sock, server_hostname="localhost")
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head begun
    return sock


def _closed_by_server(sock):
    import ssl
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def test_slow_tls_handshakes_and_heads_make_room_over_tls(tmp_path):
    """Every slot of a TLS port held from 127.0.0.2 by clients stuck in their handshake (half a
    ClientHello) or in their head: a client from 127.0.0.1 is served at once, each time in
    the slot of the one stuck longest, which is closed (in-process server)."""
    import itertools

    from apikit import Pki

    from guestkit_worker.http.server import serve_wsgi
    pki = Pki(tmp_path / "pki")
    kinds = itertools.cycle(["handshake", "head"])
    with serve_wsgi(_hello, "127.0.0.1:0", tls_cert=pki.cert, tls_key=pki.key, max_connections=4) as server:
        held = collections.deque()
        try:
            for n in range(4):
                while len(held) < 4:  # once the last client's slot is free again
                    wait_for(lambda: server.stats()["open"] == len(held), timeout=10, what="a free slot")
                    held.append(_stuck(server, pki, next(kinds)))
                wait_for(lambda: server.stats()["heads"] == 4, timeout=10, what="four slots held")
                reply = call(server.url, "GET", "/", context=pki.client_context(), timeout=10)
                assert reply.status == 200 and reply.body == b"hi\n"
                assert server.stats()["evicted"] == n + 1
                oldest = held.popleft()
                assert _closed_by_server(oldest)
                oldest.close()
        finally:
            for sock in held:
                sock.close()


def test_a_tls_hello_sent_a_byte_at_a_time_is_cut_at_the_header_deadline(tmp_path, monkeypatch):
    """A client sending its ClientHello a byte every 0.2 s is cut at the header deadline (0.5 s
    here; before: after 10 s, the connection timeout; in-process server)."""
    from apikit import Pki

    from guestkit_worker.http import request as http_request
    from guestkit_worker.http.server import serve_wsgi
    monkeypatch.setattr(http_request, "HEADER_DEADLINE", 0.5)
    pki = Pki(tmp_path / "pki")
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 500
    with serve_wsgi(_hello, "127.0.0.1:0", tls_cert=pki.cert, tls_key=pki.key, max_connections=4) as server:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            started, cut = time.monotonic(), False
            for byte in hello:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    cut = True
                    break
                if select.select([sock], [], [], 0.2)[0]:
                    cut = _closed_by_server(sock)
                    break
            took = time.monotonic() - started
        assert cut and took < 5, (cut, took)
        wait_for(lambda: server.stats()["open"] == 0, timeout=10, what="the slot freed")
        assert call(server.url, "GET", "/", context=pki.client_context()).status == 200
