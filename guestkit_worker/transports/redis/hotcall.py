"""One Redis connection per calling thread for the hottest script call, ``submit`` (one per
``POST /api/v1/jobs``): ``EVALSHA`` written and its reply read on the thread's own connection,
without redis-py's per-command pool checkout, readiness poll and release (about a fifth of the
API's CPU per submission over Redis, bench/RESULTS.md).

Same outcome as the registered script's call: a ``NOSCRIPT`` reply (a restarted or flushed
server) and a connection found broken (closed while idle, a restart) both fall back to that
call, which loads the script or connects afresh; its errors reach the transport's guard as
before.  The script is idempotent per job id and document, so a call whose reply was lost is
safe to make again.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Sequence


class ThreadConnections:
    """``evalsha(script, keys, args)`` on a connection of ``client``'s pool kept per thread;
    :meth:`close` disconnects them all (the transport's close)."""

    def __init__(self, client: Any) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError, NoScriptError, TimeoutError as RedisTimeout

        self._pool = client.connection_pool
        self._local = threading.local()
        self._lock = threading.Lock()
        # weak: a thread that ends drops its local, and its connection closes with it (redis-py
        # disconnects a connection that is collected); the API's connection threads come and go
        self._all: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._retry_on = (NoScriptError, RedisConnectionError, RedisTimeout, OSError)

    def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The reply of ``script`` run with ``keys`` and ``args``."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._pool.make_connection()
            with self._lock:
                self._all.add(conn)
            self._local.conn = conn
        try:
            conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            return conn.read_response()
        except self._retry_on as exc:
            if not isinstance(exc, self._retry_on[0]):
                conn.disconnect()  # reconnects on its next use
            return script(keys=keys, args=args)

    def close(self) -> None:
        """Disconnect every thread's connection."""
        with self._lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            try:
                conn.disconnect()
            except Exception:
                pass
