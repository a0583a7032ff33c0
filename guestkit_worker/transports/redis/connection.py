"""Connecting to Redis: the optional ``redis`` package, URLs, the password, two clients
(TLS files: :mod:`.tls`).

redis-py is imported only here and only when the Redis transport is chosen.  Two clients
share nothing: ``blocking`` runs only ``XREADGROUP ... BLOCK`` (its socket timeout is well
above the block time and it never retries, since a re-sent read would deliver entries
twice), ``client`` runs everything else with short timeouts and no automatic retries (the
worker retries a whole outcome itself).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ...job.errors import ConfigError
from .tls import TlsFiles

#: longest XREADGROUP BLOCK, seconds; the blocking client's socket timeout is this + margin
MAX_BLOCK_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 3.0
SCHEMES = ("redis", "rediss", "unix")


def import_redis() -> Any:
    """The redis module, or ConfigError naming the extra to install."""
    try:
        import redis  # noqa: PLC0415 - optional dependency, imported only when chosen
    except ImportError:
        raise ConfigError("the Redis transport needs the Python package 'redis': install "
                          "the extra guestkit-worker[redis] (pip install '.[redis]' in a checkout)") from None
    return redis


def read_password_file(path: str) -> str:
    """The first line of path (trailing newline dropped); ConfigError when unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as fh:
            password = fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"--redis-password-file {path}: {exc.strerror or exc}") from None
    if not password:
        raise ConfigError(f"--redis-password-file {path}: the file is empty")
    return password


def check_url(url: str) -> None:
    """ConfigError unless url is redis://, rediss:// or unix:// (the message never shows a password)."""
    parts = urlsplit(url or "")
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"--redis-url {redact(url)}: use redis://HOST:PORT/DB, rediss://HOST:PORT/DB "
                          "(TLS) or unix:///PATH")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"--redis-url {redact(url)}: no host name")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(f"--redis-url {redact(url)}: no socket path")


def redact(url: str) -> str:
    """url with any password (in its user part or a ``password=`` query argument, which
    redis-py also reads) replaced by ***, for logs and messages."""
    try:
        parts = urlsplit(url or "")
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"
    return _QUERY_PASSWORD.sub(r"\1***", url or "")


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def describe(url: str) -> str:
    """Where Redis is, without credentials: redis://host:port/db or unix:///path[?db=N]."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        db = parse_qs(parts.query).get("db", [""])[0]
        return f"unix://{parts.path}" + (f"?db={db}" if db else "")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path or '/0'}"


def make_clients(url: str, password: str | None = None, tls: TlsFiles | None = None) -> tuple:
    """(client, blocking): two redis.Redis clients for url; password overrides the URL's; tls:
    the CA and client certificate files of a rediss:// URL."""
    redis = import_redis()
    from redis.backoff import NoBackoff  # noqa: PLC0415
    from redis.retry import Retry  # noqa: PLC0415
    check_url(url)
    common = {"socket_connect_timeout": CONNECT_TIMEOUT_SECONDS, "retry_on_timeout": False}
    if password is not None:
        common["password"] = password
    if tls is not None:
        common.update(tls.client_kwargs())
    client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                  retry=Retry(NoBackoff(), 0), **common)
    blocking = redis.Redis.from_url(url, socket_timeout=MAX_BLOCK_SECONDS + SOCKET_TIMEOUT_SECONDS,
                                    retry=Retry(NoBackoff(), 0), **common)
    return client, blocking


def password_from(url: str, password_file: str | None) -> str | None:
    """The password to use: the file's when given (it wins over the URL's), else None (the URL's)."""
    if password_file:
        return read_password_file(os.path.expanduser(password_file))
    return None
