"""A throw-away redis-server for one benchmark: a free port on 127.0.0.1, a temp directory
under the scratch root, AOF with ``appendfsync everysec`` (no RDB snapshots), killed by its
PID when the benchmark ends.  :meth:`RedisServer.fresh` empties it between sides and rounds.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import common


class RedisServer:
    """``with RedisServer() as srv: srv.url``; one per benchmark process."""

    def __init__(self, fsync: str = "everysec") -> None:
        self.fsync = fsync
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.dir = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if not exe:
            raise SystemExit("redis-server not found (Debian package redis-server)")
        self.dir = common.fresh_dir("redis")
        for _ in range(5):  # another process may take the port between the probe and the bind
            self.port = common.free_port()
            self.proc = subprocess.Popen(
                [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir, "--save", "",
                 "--appendonly", "yes", "--appendfsync", self.fsync, "--daemonize", "no",
                 "--loglevel", "warning", "--logfile", os.path.join(self.dir, "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_up():
                return self
            self._kill()
        raise SystemExit("redis-server did not start (see its log in " + self.dir + ")")

    def __exit__(self, *exc) -> None:
        self._kill()

    def _wait_up(self) -> bool:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self):
        import redis
        return redis.Redis.from_url(self.url)

    def fresh(self) -> None:
        """An empty database and a rewritten (empty) append-only file, as a new server has."""
        r = self.client()
        try:
            r.flushall()
            r.bgrewriteaof()
            end = time.monotonic() + 30
            while time.monotonic() < end:
                info = r.info("persistence")
                if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                    break
                time.sleep(0.02)
        finally:
            r.close()

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (user + system)."""
        r = self.client()
        try:
            info = r.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            r.close()

    def version(self) -> str:
        r = self.client()
        try:
            return r.info("server")["redis_version"]
        finally:
            r.close()
