"""Who gets a connection slot of the HTTP ports (REST API and metrics) when they are all taken,
against real worker processes over real sockets: a burst of clients beyond the limits gets
answers, never resets, and the CLI's --wait rides out a busy API."""

import collections
import json
import select
import socket
import struct
import threading

from apikit import call, served  # noqa: F401 (fixture)
from conftest import cli, make_job, wait_for

JOBS = "/api/v1/jobs"
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
    """Before: of 400 concurrent result?wait calls, some got ConnectionResetError (the refused
    and evicted connections were closed with the request unread).  Now each gets 200 (the
    job's result) or 503 with Retry-After."""
    worker = served("run", "--api-max-connections", "16", "--api-max-waits", "8")
    doc = make_job("job-burst-wait", operation="test.sleep", data={"seconds": 3})
    assert call(worker.url, "POST", JOBS, doc=doc).status == 202
    outcomes = _burst(worker.url, f"{JOBS}/job-burst-wait/result?wait=30", BURST)
    assert sum(outcomes.values()) == BURST
    assert set(outcomes) <= {(200, None), (503, "1")}, outcomes
    assert outcomes[(200, None)] >= 1, outcomes


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
    """Before: ``result --wait`` exited 6 ("unavailable: ... Connection reset by peer") when a
    busy server's answer was lost to a reset.  Now it asks again after a pause, like after a
    503, and prints the result."""
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
    """Before: ``result --wait`` retried only when too many clients were waiting; a 503
    TOO_MANY_CONNECTIONS (every connection slot busy) made it exit 6.  Now it asks again after
    a pause and prints the result once a slot is free."""
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
