"""One Redis connection per calling thread for the hottest script call, ``submit`` (one per
``POST /api/v1/jobs``): ``EVALSHA`` written and its reply read on the thread's own connection,
without redis-py's per-command pool checkout, readiness poll and release (about a fifth of the
API's CPU per submission over Redis, bench/RESULTS.md).

Each call knows how far it got, because a client must be told whether to try again:

* the connection or its handshake failed, or the command could not be written whole: Redis
  never ran it; the error reaches the transport's guard (an outage: nothing was changed);
* the command was written but no reply came (a timeout: a stopped or overloaded server, or a
  connection lost): it may have run.  :class:`~..base.OutcomeUnknown` says so, and the call is
  never sent again on a timeout (the server may run it late);
* ``NOSCRIPT`` (a restarted or flushed server): it did not run; the script is loaded on the same
  connection and the call made again.

A thread's connection that had worked and is found closed (closed while idle, a restart) gets
one more try on a fresh connection.  The submit script is idempotent per job id and document, so
that try is safe even when the first call had run: it answers ``exists``.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from ..base import OutcomeUnknown


class _Unanswered(Exception):
    """The command was written, its reply never read (``cause``: the client's error)."""

    def __init__(self, cause: BaseException, timed_out: bool) -> None:
        super().__init__(str(cause))
        self.cause, self.timed_out = cause, timed_out

    def unknown(self) -> OutcomeUnknown:
        return OutcomeUnknown(f"the call reached Redis but no reply came ({type(self.cause).__name__}: "
                              f"{self.cause})")


class ThreadConnections:
    """``evalsha(script, keys, args)`` on a connection of ``client``'s pool kept per thread;
    :meth:`close` disconnects them all (the transport's close)."""

    def __init__(self, client: Any) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError
        from redis.exceptions import TimeoutError as RedisTimeout

        self._pool = client.connection_pool
        self._local = threading.local()
        self._lock = threading.Lock()
        # weak: a thread that ends drops its local, and its connection closes with it (redis-py
        # disconnects a connection that is collected); the API's connection threads come and go
        self._all: weakref.WeakSet[Any] = weakref.WeakSet()
        self._no_script, self._timeout = NoScriptError, RedisTimeout
        self._broken = (RedisConnectionError, RedisTimeout, OSError)

    def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The reply of ``script`` run with ``keys`` and ``args``.  OutcomeUnknown when the
        call reached Redis and no reply came; the client's connection errors when it never did."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._pool.make_connection()
            with self._lock:
                self._all.add(conn)
            self._local.conn = conn
        proven = getattr(self._local, "proven", False)
        try:
            reply = self._call(conn, script, keys, args)
        except _Unanswered as lost:
            self._local.proven = False
            if not proven or lost.timed_out:
                raise lost.unknown() from None
            reply = self._again(conn, script, keys, args, first=lost)
        except self._broken:
            self._local.proven = False
            conn.disconnect()
            if not proven:
                raise
            reply = self._again(conn, script, keys, args, first=None)
        self._local.proven = True  # this connection answered: found closed later, it is tried again
        return reply

    def _call(self, conn: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One EVALSHA (and SCRIPT LOAD after NOSCRIPT) on conn; _Unanswered once the call was
        written and its reply did not come, the client's error when it was not written whole."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        conn.send_command(*command)  # connects first when needed; errors: not written whole, not run
        try:
            return self._reply(conn)
        except self._no_script:
            pass  # it did not run
        conn.send_command("SCRIPT", "LOAD", script.script)
        conn.read_response()
        conn.send_command(*command)
        return self._reply(conn)

    def _reply(self, conn: Any) -> Any:
        try:
            return conn.read_response()
        except self._broken as exc:
            conn.disconnect()
            raise _Unanswered(exc, isinstance(exc, self._timeout)) from exc

    def _again(self, conn: Any, script: Any, keys: Sequence[Any], args: Sequence[Any],
               first: _Unanswered | None) -> Any:
        """The call once more on a fresh connection, for a thread's connection found closed.
        ``first``: the first call was written (it may have run), so if this one fails too the
        outcome is unknown."""
        conn.disconnect()
        try:
            return self._call(conn, script, keys, args)
        except _Unanswered as lost:
            raise (first or lost).unknown() from None
        except self._broken:
            conn.disconnect()
            if first is not None:
                raise first.unknown() from None
            raise

    def close(self) -> None:
        """Disconnect every thread's connection."""
        with self._lock:
            conns = list(self._all)
            self._all.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.disconnect()
