"""The HTTP port's connection limit: a flood of real connections cannot take the worker's
thread budget, and /metrics keeps answering."""

import contextlib
import json
import resource
import socket
import threading

import pytest
from conftest import make_job, wait_for, write_job
from faultkit import Worker, total
from metricskit import get

from guestkit_worker.http.linger import MAX_LINGERING
from guestkit_worker.http.server import serve_wsgi

pytestmark = pytest.mark.integration

FLOOD = 1000


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"hi\n"]


def _enough_fds(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def _connect_many(stack, host, port, n):
    return [stack.enter_context(socket.create_connection((host, port), timeout=10)) for _ in range(n)]


def test_1000_idle_connections_keep_threads_bounded_and_metrics_answering(dirs):
    """1,000 idle connections do not make 1,000 threads: the worker holds at most
    --http-max-connections of them (the longest idle makes room for a newcomer, answered 503),
    creates no thread for a connection that sends nothing, and a scrape and a job go through
    meanwhile."""
    _enough_fds(FLOOD)
    w = Worker(dirs, "--http-max-connections", "16", "--worker-id", "http-flood")
    try:
        host, port = w.url.rsplit("//", 1)[1].rsplit(":", 1)
        w.wait_running()
        assert get(w.url + "/health")[0] == 200
        baseline = w.threads()
        with contextlib.ExitStack() as stack:
            socks = _connect_many(stack, host, int(port), FLOOD)
            assert len(socks) == FLOOD
            status, _, body = get(w.url + "/metrics", timeout=10)
            assert status == 200 and "guestkit_worker_active_jobs" in body
            # threads: at most one per slot (16) beyond the baseline, never one per connection
            assert w.threads() <= baseline + 16, (baseline, w.threads())
            # and the worker holds at most 16 client sockets, plus those it is closing
            # gracefully (at most MAX_LINGERING, each for LINGER_SECONDS), plus its own files
            assert w.fds() < 16 + MAX_LINGERING + 64
            write_job(dirs.jobs, make_job("during-flood-01"))
            wait_for(lambda: "during-flood-01.json" in dirs.listing("done"), what="job during the flood")
            assert total(w.counted(1), "guestkit_worker_jobs_total", status="completed") == 1
            status, _, body = get(w.url + "/health", timeout=10)
            assert status == 200 and json.loads(body)["status"] == "healthy"
            # the oldest idle connections made room: told 503 (retry later), then closed
            socks[0].settimeout(5)
            with socks[0].makefile("rb") as stream:
                answer = stream.read()
            assert answer.startswith(b"HTTP/1.0 503 ") and b"Retry-After: 1" in answer, answer
        assert w.alive()
    finally:
        w.ensure_stopped()


def test_busy_slots_refuse_newcomers_at_once_with_503():
    """Every slot busy with a request in progress: a newcomer gets 503 at once instead of a
    thread; once a slot frees up, requests are served again."""
    with serve_wsgi(_hello, "127.0.0.1:0", max_connections=2) as server:
        with contextlib.ExitStack() as stack:
            busy = _connect_many(stack, server.host, server.port, 2)
            for sock in busy:
                sock.sendall(b"GET / HTTP/1.1\r\n")  # a request that has started, not finished
            wait_for(lambda: server.stats()["threads"] == 2, timeout=10, what="two busy threads")
            with socket.create_connection((server.host, server.port), timeout=5) as late:
                reply = late.recv(4096)
            assert reply.startswith(b"HTTP/1.0 503 "), reply
            assert b"Retry-After: 1" in reply
            assert server.stats()["refused"] == 1
            busy[0].sendall(b"Host: x\r\nConnection: close\r\n\r\n")
            assert busy[0].recv(4096).startswith(b"HTTP/1.1 200")
        # the client may read the answer before the server thread has closed its end: a slot
        # is free once the server says so (the threads end on their own, not at once)
        wait_for(lambda: server.stats()["open"] == 0, timeout=10, what="both slots free")
        status, _, body = get(server.url + "/", timeout=5)
        assert status == 200 and body == "hi\n"
        assert server.stats()["threads"] <= 2


def test_idle_connections_expire_without_a_thread(monkeypatch):
    """A connection that never sends a byte is closed after CONNECTION_TIMEOUT, and no thread
    was ever started for it."""
    from guestkit_worker.http import request as http_request
    monkeypatch.setattr(http_request, "CONNECTION_TIMEOUT", 0.3)
    with serve_wsgi(_hello, "127.0.0.1:0", max_connections=8) as server:
        with contextlib.ExitStack() as stack:
            socks = _connect_many(stack, server.host, server.port, 5)
            for sock in socks:
                assert sock.recv(1) == b""  # closed by the server (bounded by the 10 s timeout)
        stats = server.stats()
        assert stats["expired"] == 5 and stats["threads"] == 0 and stats["open"] == 0


def test_port_is_bound_before_accepting():
    """start=False binds (so the port is taken and reported) but serves nobody until start()."""
    server = serve_wsgi(_hello, "127.0.0.1:0", start=False)
    try:
        result = {}

        def ask():
            result["reply"] = get(server.url + "/", timeout=10)

        asker = threading.Thread(target=ask)
        asker.start()
        asker.join(0.5)
        assert asker.is_alive() and not result  # waiting in the listen queue
        server.start()
        asker.join(10)
        assert result["reply"][0] == 200
    finally:
        server.shutdown()
