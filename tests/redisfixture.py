"""A real redis-server for the tests: started on a free TCP port in a temp dir (append-only
file fsynced on every write, no RDB snapshots), stopped by its PID.

Fixtures: ``redis_server`` (one per test session; each test takes its own pool name, so
their keys never meet) and ``redis_url``.  :class:`RedisServer` can also be SIGKILLed and
started again on the same port and data directory (the restart test).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

from conftest import require, require_tool, wait_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory, port=None, extra_args=()):
        self.dir = str(directory)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        exe = require_tool("redis-server")
        os.makedirs(self.dir, exist_ok=True)
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                      "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                                      "--protected-mode", "no", "--daemonize", "no", *self.extra_args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.ping, timeout=20, what=f"redis-server on port {self.port}")
        return self

    restart = start  # after kill(): same port, same data directory (what the AOF kept)

    def ping(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self):
        """SIGKILL by PID (no shutdown save: what survives is what the AOF holds)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc:
            self.log.close()

    def cli(self, *args, check=True):
        """Run redis-cli against this server; stdout as text."""
        exe = require_tool("redis-cli")
        p = subprocess.run([exe, "-p", str(self.port), *args], capture_output=True, text=True, timeout=30)
        if check:
            assert p.returncode == 0, p.stderr
        return p.stdout

    def client(self):
        require_redis_py()
        import redis
        return redis.Redis.from_url(self.url)


def require_redis_py():
    try:
        import redis  # noqa: F401
    except ImportError:
        require(False, "the Python package redis is not installed (pip install '.[redis]')")


def start_redis(directory, extra_args=()):
    """A started RedisServer in directory (a few tries: a free port can be taken meanwhile)."""
    for attempt in range(3):
        server = RedisServer(directory, extra_args=extra_args)
        try:
            return server.start()
        except AssertionError:
            server.stop()
            if attempt == 2:
                raise
            shutil.rmtree(directory, ignore_errors=True)
            time.sleep(0.2)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


@pytest.fixture
def pool():
    """A pool name of this test's own (its keys never meet another test's)."""
    return f"t{uuid.uuid4().hex[:10]}"
