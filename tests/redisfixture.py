"""A real redis-server for the tests: started on a free TCP port in a temp dir (append-only
file fsynced on every write, no RDB snapshots), stopped by its PID.

Fixtures: ``redis_server`` (one per test session; each test takes its own pool name, so
their keys never meet) and ``redis_url``.  :class:`RedisServer` can also be SIGKILLed and
started again on the same port and data directory (the restart test), listen on a unix
socket only (``unix=True``) or on a TLS port only (``tls=``: an apikit.Pki; ``auth_clients``:
require a client certificate signed by its CA).
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
from conftest import require, require_tool, wait_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory, port=None, extra_args=(), *, unix=False, tls=None, auth_clients=False):
        self.dir = str(directory)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self.tls, self.auth_clients = tls, auth_clients
        self.socket = None
        if unix:  # a short path of its own: a unix socket's path has at most 107 bytes
            self.socket = os.path.join(tempfile.mkdtemp(prefix="gkredis-"), "redis.sock")
            self.url = f"unix://{self.socket}"
        elif tls:
            self.url = f"rediss://127.0.0.1:{self.port}/0"
        else:
            self.url = f"redis://127.0.0.1:{self.port}/0"

    def listen_args(self):
        if self.socket:
            return ["--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700"]
        if self.tls:
            return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert,
                    "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca,
                    "--tls-auth-clients", "yes" if self.auth_clients else "no"]
        return ["--port", str(self.port)]

    def start(self):
        exe = require_tool("redis-server")
        os.makedirs(self.dir, exist_ok=True)
        argv = [exe, *self.listen_args(), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no",
                "--daemonize", "no", *self.extra_args]
        # redis-server writes through its own copy of the descriptor
        with open(os.path.join(self.dir, "redis.log"), "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ping, timeout=20, what=f"redis-server at {self.url}")
        return self

    restart = start  # after kill(): same port, same data directory (what the AOF kept)

    def ping(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log")
        try:
            with self._connect() as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _connect(self):
        if self.socket:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(1)
            s.connect(self.socket)
            return s
        s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        if not self.tls:
            return s
        server_name = getattr(self.tls, "server_name", "127.0.0.1")
        return self.tls.client_context(*self.client_cert()).wrap_socket(s, server_hostname=server_name)

    def client_cert(self):
        """(certificate, key) a client needs here: the Pki's client certificate when required."""
        return (self.tls.client_cert, self.tls.client_key) if self.auth_clients else (None, None)

    def kill(self):
        """SIGKILL by PID (no shutdown save: what survives is what the AOF holds)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.socket:
            shutil.rmtree(os.path.dirname(self.socket), ignore_errors=True)

    def cli(self, *args, check=True):
        """Run redis-cli against this server; stdout as text."""
        exe = require_tool("redis-cli")
        where = ["-s", self.socket] if self.socket else ["-p", str(self.port)]
        if self.tls:
            cert, key = self.client_cert()
            where += ["--tls", "--cacert", self.tls.ca] + (["--cert", cert, "--key", key] if cert else [])
        p = subprocess.run([exe, *where, *args], capture_output=True, text=True, timeout=30)
        if check:
            assert p.returncode == 0, p.stderr
        return p.stdout

    def client(self, db=0):
        require_redis_py()
        import redis
        kwargs = {"db": db}
        if self.tls:
            cert, key = self.client_cert()
            kwargs.update(ssl_ca_certs=self.tls.ca, ssl_certfile=cert, ssl_keyfile=key)
        return redis.Redis.from_url(self.url, **kwargs)


def require_redis_py():
    try:
        import redis  # noqa: F401
    except ImportError:
        require(False, "the Python package redis is not installed (pip install '.[redis]')")


def start_redis(directory, extra_args=(), **listen):
    """A started RedisServer in directory (a few tries: a free port can be taken meanwhile);
    listen: RedisServer's unix, tls and auth_clients."""
    for attempt in range(3):
        server = RedisServer(directory, extra_args=extra_args, **listen)
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


def submit_and_run_once(tmp_path, pool, job_id, where, env=None):
    """``submit`` a job, then ``run --once`` a worker, both through the real CLI with the flags
    where (--redis-url ... and its TLS files); (submit's, run's) CompletedProcess."""
    import json

    from conftest import cli, make_job
    job = tmp_path / f"{job_id}.json"
    job.write_text(json.dumps(make_job(job_id, data={"message": "over " + where[1]})))
    common = ["--transport", "redis", "--pool", pool, *where]
    submitted = cli("submit", str(job), *common, env=env, timeout=60)
    if submitted.returncode != 0:
        return submitted, None
    ran = cli("run", "--once", *common, "--worker-id", f"{pool}-w", "--metrics-enabled", "false",
              "--work-dir", str(tmp_path / "work"), env=env, timeout=120)
    return submitted, ran


def stored_result(client, pool, job_id):
    """The result document the Redis transport stored for job_id in pool (None: none)."""
    import json

    from guestkit_worker.transports.redis import Keys
    raw = client.get(Keys(pool).result(job_id))
    return json.loads(raw) if raw is not None else None
