"""The listening side of the HTTP ports (metrics and REST API): ``HOST:PORT`` option parsing,
the bound socket with its WSGI environment, and the TLS server context.  The connections
themselves are run by :mod:`guestkit_worker.http.server`."""

import ipaddress
import logging
import re
import socket
import socketserver
import ssl
from wsgiref.simple_server import WSGIServer

from ..job.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["display_addr", "parse_addr", "ssl_context"]

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?")
_PORT_RE = re.compile(r"[0-9]{1,5}")


# -- address parsing ----------------------------------------------------------------------

def parse_addr(text, option="--metrics-addr"):
    """Parse a ``HOST:PORT`` option value into ``(host, port)``.

    Accepted forms: ``HOST:PORT`` (IPv4 address or host name), ``[IPV6]:PORT`` and ``:PORT``,
    which means every IPv4 interface (host ``"0.0.0.0"``; use ``[::]:PORT`` for dual stack).
    Port 0 asks the kernel for a free port.  Raises :class:`ConfigError` naming ``option``.
    """
    def bad(reason=None):
        detail = f" ({reason})" if reason else ""
        return ConfigError(f"{option}: expected HOST:PORT, got {text!r}{detail}")

    if not isinstance(text, str):
        raise bad("not a string")
    value = text.strip()
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1:close + 2] != ":":
            raise bad("an IPv6 address must look like [::1]:9090")
        host, port_text = value[1:close], value[close + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise bad("missing ':PORT'")
        if ":" in host:
            raise bad("put an IPv6 address in brackets, e.g. [::1]:9090")
        if host == "":
            host = "0.0.0.0"
        elif host.replace(".", "").isdigit():
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise bad(f"{host!r} is not an IPv4 address") from None
        elif len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
            raise bad(f"{host!r} is not a host name or address")
    if not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
        raise bad(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def display_addr(host, port):
    """``host:port`` with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListeningServer(WSGIServer):
    """The bound listening socket and the WSGI environment; connections are run by WSGIService."""

    allow_reuse_address = True   # lets a restart bind past TIME_WAIT; never two listeners
    allow_reuse_port = False
    request_queue_size = 128

    def server_bind(self):
        """Bind (dual stack for ``::``) without the reverse DNS lookup HTTPServer does."""
        host = self.server_address[0]
        if self.address_family == socket.AF_INET6 and host in ("::", "::0"):
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except (AttributeError, OSError):
                logger.debug("could not clear IPV6_V6ONLY; listening on IPv6 only")
        socketserver.TCPServer.server_bind(self)
        self.server_name = host
        self.server_port = self.server_address[1]
        self.setup_environ()


def ssl_context(tls_cert, tls_key, what="metrics"):
    """A TLS 1.2+ server context from PEM files; ConfigError when they cannot be loaded."""
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError(f"{what} TLS needs both a certificate and a key; got only the "
                          + ("certificate" if tls_cert else "key"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=tls_cert, keyfile=tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load {what} TLS certificate {tls_cert!r} / key {tls_key!r}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return context
