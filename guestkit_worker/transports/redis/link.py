"""The link of one worker to its pool on Redis (:class:`RedisLink`): the clients and scripts,
the guard that turns the client's errors into outages, the pause every retry waits, the
consumer group, this worker's liveness key (its identity) and the grace after an outage.
Every other part of the Redis transport talks to Redis through it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Callable

from ...job.errors import ConfigError
from ..base import OutcomeUnknown, StopRequested, TransportObserver, TransportUnavailable
from . import connection, tls
from .hotcall import ThreadConnections
from .keys import GROUP, Keys
from .scripts import Scripts, load_scripts

log = logging.getLogger(__name__)

#: oldest Redis with XPENDING IDLE and XAUTOCLAIM
MIN_REDIS = (6, 2)
#: replies that mean "storage trouble, try again later" rather than a bug
_TRANSIENT_REPLIES = ("MISCONF", "READONLY", "LOADING", "OOM", "NOGROUP", "MASTERDOWN", "TRYAGAIN",
                      "CLUSTERDOWN", "BUSY ")


class RedisUnavailable(TransportUnavailable, OSError):
    """Redis cannot be reached or answers that it is in trouble.  An OSError too, so that
    every path of the worker that handles storage trouble (give the job back, back off, try
    again later) handles a Redis outage the same way."""


class RedisOutcomeUnknown(OutcomeUnknown, RedisUnavailable):
    """A change reached Redis and its reply never came back: it may or may not have been made."""


def text(value: Any) -> str:
    """A reply as text (bytes decoded, anything else as str)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisLink:
    """One worker's connection to pool ``k`` on the Redis at ``url``.

    Settings the parts share (read, and set by tests): ``worker_id``, ``pool``, ``k``,
    ``lease_seconds``, ``result_ttl``, ``stale_consumer_seconds``.  ``observer``: where
    failed calls are reported; ``stopping``: the worker's "asked to stop" test (a wait ends
    on it).  ``identity_lost`` is set when another process took this worker id."""

    def __init__(self, url: str, worker_id: str, *, pool: str, password_file: str | None, tls_files: Any,
                 lease_seconds: float, result_ttl: int, observer: TransportObserver,
                 stopping: Callable[[], bool]) -> None:
        self.url, self.password_file, self.tls = url, password_file, tls_files
        self.worker_id, self.pool = worker_id, pool
        self.k = Keys(pool)
        self.lease_seconds, self.result_ttl = lease_seconds, result_ttl
        #: maintain() removes consumers idle this long with nothing pending (workers long gone)
        self.stale_consumer_seconds = max(3600.0, 10 * lease_seconds)
        self.observer, self.stopping = observer, stopping
        self.redis = connection.import_redis()
        self.r: Any = None
        self.rb: Any = None
        self.s: Scripts | None = None
        self.hot: ThreadConnections | None = None
        self.closing = threading.Event()  # close() called: waits end, commits stop retrying
        #: what this process writes in its worker id's liveness key (host, pid, random): a
        #: second process with the same id is told apart from this one
        self.mark = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.identity_lost: str | None = None
        #: monotonic time of the last refresh of the liveness key (alive() refreshes it at most
        #: every lease/4 after it; a test sets it to inf to let the key expire)
        self.alive_at = 0.0
        self._group_ok = False
        self._reached = False               # a round trip succeeded: connection trouble is an outage
        self._ok_at = float("-inf")         # end of the last round trip that succeeded
        self._down_since: float | None = None  # while Redis fails: the last success before
        self._back_at = float("-inf")       # Redis answered again after an outage (see in_grace)
        self._away = 0.0                    # how long that outage was, seen from here (inf: since start)
        self._grace_told = float("-inf")    # the _back_at whose grace the log has announced

    @property
    def where(self) -> str:
        """The URL without secrets, for messages."""
        return connection.describe(self.url)

    # -- connecting ---------------------------------------------------------------------
    def connect(self) -> None:
        """Make the clients (no round trip yet).  open() does it, and so does the first use
        by a producer or a reader that never calls open()."""
        if self.r is None:
            password = connection.password_from(self.url, self.password_file)
            self.r, self.rb = connection.make_clients(self.url, password, self.tls)
            self.s = load_scripts(self.r)
            self.hot = ThreadConnections(self.r)

    def open(self) -> None:
        """Connect, check the server, create the stream and group, take the worker id.  While
        Redis cannot be reached, wait for it (a pause growing to 10 s, each try logged): a
        fleet may start before its Redis.  A wrong password or a server too old is a
        ConfigError at once.  The worker asked to stop meanwhile: StopRequested at once."""
        self.connect()
        pause = 0.5
        while True:
            try:
                return self._open_once()
            except TransportUnavailable as exc:
                log.warning("%s; trying again in %.1fs", exc, pause)
                if self.pause(pause):
                    raise StopRequested(f"stop requested while waiting for redis at {self.where} "
                                        f"({exc})") from None
                pause = min(10.0, pause * 2)

    def _open_once(self) -> None:
        with self.guard("open"):
            try:
                info = self.r.info("server")
            except self.redis.exceptions.AuthenticationError as exc:
                raise ConfigError(f"redis at {self.where}: authentication failed ({exc}); check the "
                                  "password (--redis-password-file or the URL)") from None
            except self.redis.exceptions.ResponseError as exc:
                if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
                    raise ConfigError(f"redis at {self.where}: {exc}") from None
                raise
        version = tuple(int(x) for x in str(info.get("redis_version", "0.0")).split(".")[:2])
        if version < MIN_REDIS:
            raise ConfigError(f"redis at {self.where} is version {info.get('redis_version')}; the Redis "
                              f"transport needs {MIN_REDIS[0]}.{MIN_REDIS[1]} or later")
        self.ensure_group()
        self._claim_worker_id()

    def ensure_group(self) -> None:
        """Create the stream and the consumer group (from the stream's start, so entries a
        producer added before any worker existed are delivered) and this consumer."""
        if self._group_ok:
            return
        with self.guard("open"):
            try:
                self.r.xgroup_create(self.k.jobs, GROUP, id="0", mkstream=True)
            except self.redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self.r.xgroup_createconsumer(self.k.jobs, GROUP, self.worker_id)
        self._group_ok = True

    def close(self, *, holding: bool) -> None:
        """Leave the group, and give up the worker id unless this worker still holds entries
        (``holding``: reservations of held jobs stay until its key expires); a worker whose id
        another process took leaves the consumer and the key to that process.  Then close the
        clients.  Nothing raises."""
        self.closing.set()
        if self.r is None:
            return
        try:
            with self.guard("close"):
                if not self.identity_lost:
                    self.s.leave(keys=[self.k.jobs], args=[GROUP, self.worker_id])
                if not holding and not self.identity_lost:
                    self.s.unalive(keys=[self.k.alive(self.worker_id)], args=[self.mark])
        except Exception as exc:
            log.debug("redis transport: leaving the group failed (%s)", exc)
        self.hot.close()
        for client in (self.r, self.rb):
            with contextlib.suppress(Exception):
                client.close()

    def pause(self, seconds: float) -> bool:
        """Wait up to seconds; True as soon as the worker is asked to stop (``stopping``) or
        close() is called, so that no wait of the transport outlives a stop."""
        end = time.monotonic() + seconds
        while not (self.closing.is_set() or self.stopping()):
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.closing.wait(min(0.1, left))
        return True

    def redis_time(self) -> float:
        """The server's clock, in seconds."""
        sec, usec = self.r.time()
        return sec + usec / 1e6

    # -- this worker's identity ---------------------------------------------------------
    def _claim_worker_id(self) -> None:
        """Take this worker id's liveness key.  Two live workers with one id would share one
        consumer (and each other's deliveries): wait up to a lease for a predecessor's key to
        expire (a worker that crashed), then refuse (ConfigError) if it is still refreshed.  The
        key holds this process's mark: see alive() for a second process that took it later."""
        key = self.k.alive(self.worker_id)
        ttl_ms = int(self.lease_seconds * 1000)
        end = time.monotonic() + self.lease_seconds * 1.5
        with self.guard("open"):
            while not self.r.set(key, self.mark, px=ttl_ms, nx=True):
                if time.monotonic() > end:
                    raise ConfigError(f"worker id {self.worker_id} is in use by a live worker of pool "
                                      f"{self.pool} (its liveness key {key} is being refreshed); give every "
                                      "worker of a fleet its own --worker-id")
                log.warning("worker id %s: its liveness key %s exists (a predecessor that crashed, or a live "
                            "worker with the same id); waiting up to a lease for it to expire",
                            self.worker_id, key)
                if self.pause(min(1.0, self.lease_seconds / 4)):
                    raise StopRequested(f"stop requested while waiting for worker id {self.worker_id} "
                                        "to be free")
        self.alive_at = time.monotonic()

    def alive(self, force: bool = False) -> None:
        """Refresh this worker's liveness key (expires a lease after the last refresh), at most
        every lease/4; idempotency reservations of a worker whose key expired are taken over.
        A key that names another process (which took this worker id while this one was
        paused past its lease) is left to it: identity_lost is set and the worker stops."""
        now = time.monotonic()
        if self.identity_lost or (not force and now - self.alive_at < self.lease_seconds / 4):
            return
        self.alive_at = now
        try:
            with self.guard("renew"):
                reply = self.s.alive(keys=[self.k.alive(self.worker_id)],
                                     args=[self.mark, int(self.lease_seconds * 1000)])
        except Exception as exc:  # counted by the guard; the next call tries again
            self.alive_at = 0.0
            log.debug("refreshing the liveness key failed: %s", exc)
            return
        if reply != 1:
            self._lose_identity(text(reply))

    def _lose_identity(self, other: str) -> None:
        """Another process holds this worker id's liveness key now (it took the id while this
        one was away past its lease): this one takes nothing more and the worker stops."""
        if self.identity_lost:
            return
        self.identity_lost = (f"worker id {self.worker_id} of pool {self.pool} was taken over by another "
                              f"live process (its liveness key {self.k.alive(self.worker_id)} names {other}, "
                              f"this process is {self.mark})")

    # -- outages ------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, operation: str) -> Iterator[None]:
        """Turn the client's connection errors (and replies meaning a server in trouble) into
        TransportUnavailable, reported as transport_error(operation) (a call that reached Redis
        without a reply: RedisOutcomeUnknown, an OutcomeUnknown).  Before the first round trip
        succeeded, a connection no retry will cure (TLS certificates, TLS or plain on the wrong
        port, a server that does not speak Redis) is a ConfigError instead."""
        exc_mod = self.redis.exceptions
        if self.r is None:
            self.connect()
        try:
            yield
            self._reached = True
            self._ok_at = time.monotonic()
            if self._down_since is not None:
                self._came_back()
        except OutcomeUnknown as exc:
            self._unavailable(operation)
            raise RedisOutcomeUnknown(f"redis {operation}: {exc}") from None
        except (exc_mod.ConnectionError, exc_mod.TimeoutError) as exc:
            if isinstance(exc, exc_mod.AuthenticationError) and operation == "open":
                raise
            problem = None if self._reached else tls.diagnose(self.url, self.tls, exc)
            if problem:
                raise ConfigError(f"redis at {self.where}: {problem}") from None
            self._unavailable(operation)
            raise RedisUnavailable(f"redis {operation}: {type(exc).__name__}: {exc}") from None
        except exc_mod.InvalidResponse as exc:  # not the Redis protocol: something else on that port
            what = f"the server did not answer as Redis ({str(exc)[:120]})"
            if not self._reached:
                raise ConfigError(f"--redis-url {self.where}: {what}; is that the Redis port?") from None
            self._unavailable(operation)
            raise RedisUnavailable(f"redis {operation}: {what}") from None
        except exc_mod.ResponseError as exc:
            reply = str(exc)
            if not reply.startswith(_TRANSIENT_REPLIES):
                raise
            self._unavailable(operation)
            if reply.startswith("NOGROUP"):
                self._group_ok = False  # the stream was deleted (or Redis lost its data): recreate
            raise RedisUnavailable(f"redis {operation}: {reply}") from None

    def _unavailable(self, operation: str) -> None:
        self.observer.transport_error(operation)
        if self._down_since is None:
            self._down_since = self._ok_at

    def _came_back(self) -> None:
        """Redis answers again.  After an outage of a quarter lease or more (since the last
        success before it; unknown before the first success), the leases of live workers may
        look expired: the grace of reclaim (one lease from now) lets them renew and store first."""
        down, self._down_since = self._down_since, None
        if down is None or self._ok_at - down < self.lease_seconds / 4:
            return
        self._back_at, self._away = self._ok_at, self._ok_at - down

    def in_grace(self) -> bool:
        """True for a lease after Redis came back from an outage (see _came_back); the first
        reclaim that waits says so in the log."""
        back = self._back_at
        if time.monotonic() - back >= self.lease_seconds:
            return False
        if self._grace_told != back:
            self._grace_told = back
            away = "since this worker started" if self._away == float("inf") else f"for {self._away:.1f}s"
            log.warning("redis at %s answers again (unreachable %s); jobs of other workers are taken over "
                        "only %.0fs after that, so that live workers renew their leases and store their "
                        "outcomes first", self.where, away, self.lease_seconds,
                        extra={"event": "reclaim_grace"})
        return True
