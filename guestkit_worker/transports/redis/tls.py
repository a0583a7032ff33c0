"""TLS to Redis (``rediss://``): the operator's CA and client certificate files, checked
before any connection, and the diagnosis of a connection that failed for a reason no retry
will cure (a server certificate this worker does not trust, a client certificate the server
refuses or misses, a plain client on a TLS port or the other way round).

:func:`diagnose` is only asked before a transport's first successful round trip: such a
failure at start is a configuration error (exit 2), while later the same symptom is an outage
that the worker rides out like any other.
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...job.errors import ConfigError

#: how long a diagnosing probe may take to connect and to read a reply, seconds
PROBE_TIMEOUT_SECONDS = 3.0
#: TLS alerts and errors that say the certificates do not fit (retrying does not help)
_CERTIFICATE_REASONS = ("CERTIFICATE", "UNKNOWN_CA", "BAD_CERTIFICATE", "KEY_VALUES_MISMATCH")
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the certificate
#: is trusted but names another host
_NAME_MISMATCH = (62, 64)
#: causes that say nobody listens there (yet), so a probe would learn nothing: wait for Redis
_NOBODY_THERE = (ConnectionRefusedError, FileNotFoundError, socket.gaierror)


@dataclass(frozen=True)
class TlsFiles:
    """--redis-tls-ca-file, --redis-tls-cert-file, --redis-tls-key-file (None: not given)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def given(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)

    def client_kwargs(self) -> dict:
        """redis-py's keyword arguments for these files (only the given ones)."""
        kwargs = {}
        for name, value in (("ssl_ca_certs", self.ca_file), ("ssl_certfile", self.cert_file),
                            ("ssl_keyfile", self.key_file)):
            if value:
                kwargs[name] = os.path.expanduser(value)
        return kwargs

    def context(self) -> ssl.SSLContext:
        """The client context these files make (the system's CAs without a CA file);
        ConfigError naming the flag when a file cannot be used."""
        ca = os.path.expanduser(self.ca_file) if self.ca_file else None
        try:
            context = ssl.create_default_context(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--redis-tls-ca-file {self.ca_file}: not a usable CA file "
                              f"({_reason(exc)})") from None
        if self.cert_file:
            try:
                context.load_cert_chain(os.path.expanduser(self.cert_file),
                                        os.path.expanduser(self.key_file) if self.key_file else None)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"--redis-tls-cert-file {self.cert_file}: not a usable client certificate "
                                  f"and key ({_reason(exc)})") from None
        return context


def check(url: str, files: TlsFiles, where: str) -> None:
    """ConfigError when the files are given without rediss://, a key without a certificate, or
    a file that cannot be read or used (naming the flag and the cause)."""
    if not files.given():
        return
    if urlsplit(url).scheme != "rediss":
        raise ConfigError(f"--redis-tls-ca-file, --redis-tls-cert-file and --redis-tls-key-file need a "
                          f"rediss:// --redis-url (TLS), got {where}")
    if files.key_file and not files.cert_file:
        raise ConfigError("--redis-tls-key-file needs --redis-tls-cert-file (the client certificate)")
    for flag, path in (("--redis-tls-ca-file", files.ca_file), ("--redis-tls-cert-file", files.cert_file),
                       ("--redis-tls-key-file", files.key_file)):
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise ConfigError(f"{flag} {path}: no such file")
    files.context()


def diagnose(url: str, files: TlsFiles, exc: BaseException) -> str | None:
    """Why a connection to url failed, when no retry will cure it; else None.  exc is redis-py's
    ConnectionError or TimeoutError (its cause holds the socket's or TLS layer's error)."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or _cause(exc, _NOBODY_THERE) is not None:
        return None
    cause = _cause(exc, ssl.SSLError)
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = (cause.verify_message or _reason(cause)).rstrip(".")
        if cause.verify_code in _NAME_MISMATCH:
            return (f"the server's TLS certificate failed verification ({why}); use a host name or address "
                    "in --redis-url that the certificate names (its subjectAltName)")
        return (f"the server's TLS certificate failed verification ({why}); "
                "give the CA that signed it with --redis-tls-ca-file")
    if parts.scheme == "rediss":
        reason = _reason(cause) if cause is not None else None
        if not _about_certificates(reason):
            reason = _probe_tls(parts.hostname, parts.port or 6379, files)
        if _about_certificates(reason):
            return f"the server refused the TLS handshake ({reason}); check --redis-tls-cert-file and " \
                   "--redis-tls-key-file: it wants a client certificate signed by a CA it trusts"
        if reason == "plain":
            return "the server speaks plain Redis, not TLS: use a redis:// URL"
        return None
    if _cause(exc, (socket.timeout, TimeoutError)) is not None:  # redis:// slow or far away: wait for it
        return None
    if _probe_tls(parts.hostname, parts.port or 6379, None) == "tls":
        return "the server speaks TLS: use a rediss:// URL (and --redis-tls-ca-file)"
    return None


def _about_certificates(reason: str | None) -> bool:
    return bool(reason) and any(word in reason for word in _CERTIFICATE_REASONS)


def _cause(exc: BaseException | None, kinds: Any) -> BaseException | None:
    """The first exception of kinds in exc's chain of causes (a few links deep), else None."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, kinds):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def _probe_tls(host: str | None, port: int, files: TlsFiles | None) -> str | None:
    """Talk to host:port once, bounded: with files, a TLS handshake and a PING as redis-py would
    (the reason of a TLS error, ``plain`` when the server answers in plain text, else None);
    without, does the port complete a TLS handshake (``tls``) or not (None)."""
    try:
        raw = socket.create_connection((host or "localhost", port), timeout=PROBE_TIMEOUT_SECONDS)
    except OSError:
        return None
    with raw:
        if files is None:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            try:
                with context.wrap_socket(raw, server_hostname=host):
                    return "tls"
            except (OSError, ValueError):
                return None
        try:
            with files.context().wrap_socket(raw, server_hostname=host) as sock:
                sock.sendall(b"PING\r\n")
                sock.recv(64)
            return None
        except ssl.SSLError as exc:
            if "WRONG_VERSION_NUMBER" in _reason(exc) or "record layer failure" in str(exc):
                return "plain"
            return _reason(exc)
        except socket.timeout:
            return _plain_redis(host, port)
        except (OSError, ValueError):
            return None


def _plain_redis(host: str | None, port: int) -> str | None:
    """``plain`` when host:port answers a plain-text PING as Redis does, else None."""
    try:
        with socket.create_connection((host or "localhost", port), timeout=PROBE_TIMEOUT_SECONDS) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return None
    return "plain" if reply.startswith((b"+PONG", b"-NOAUTH", b"-DENIED")) else None
