"""The worker's metrics port: Prometheus metrics, a health probe and a tiny landing page.

``start_server`` serves, through :func:`guestkit_worker.http.server.serve_wsgi` (bounded
connections and threads, timeouts for idle and slow clients, optional TLS), three routes:

* ``/metrics`` -- prometheus_client's own WSGI app for the given registry, so gzip, OpenMetrics
  negotiation (``Accept`` header) and the ``name[]=`` filter behave exactly as upstream;
* ``/health`` -- JSON from the caller's ``health()`` callable: 200 when healthy, 503 otherwise
  (also 503 when ``health()`` raises; the server never dies of it);
* ``/`` -- a static HTML page linking both.

Anything else is 404; methods other than GET, HEAD and OPTIONS are 405.  Nothing else is
exposed: no file access and no way to submit work.
"""

import contextlib
import json
import logging

from prometheus_client import make_wsgi_app

from ..settings.defaults import DEFAULT_HTTP_MAX_CONNECTIONS
from .auth import CHALLENGE, CHALLENGE_INVALID, bearer_token
from .listen import ssl_context
from .server import serve_wsgi

logger = logging.getLogger(__name__)

__all__ = ["start_server"]

#: Largest request body read (and thrown away) before answering 405.
_MAX_DISCARDED_BODY = 65536

_ALLOW = "GET, HEAD, OPTIONS"

_LANDING_PAGE = (
    b"<!DOCTYPE html>\n"
    b"<html><head><meta charset=\"utf-8\"><title>guestkit-worker</title></head>\n"
    b"<body><h1>guestkit-worker</h1>\n"
    b"<ul><li><a href=\"/metrics\">/metrics</a> (Prometheus)</li>\n"
    b"<li><a href=\"/health\">/health</a> (JSON health check)</li></ul>\n"
    b"</body></html>\n"
)


# -- the WSGI application -----------------------------------------------------------------

def _plain(status, text, extra=()):
    """A precomputed (status, headers, body) triple for a plain-text answer."""
    body = text.encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body)))]
    headers.extend(extra)
    return status, headers, body


_NOT_FOUND = _plain("404 Not Found", "404 not found; try /metrics or /health\n")
_NOT_ALLOWED = _plain("405 Method Not Allowed", "405 method not allowed; use GET, HEAD or OPTIONS\n",
                      [("Allow", _ALLOW)])
_LANDING = ("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                       ("Content-Length", str(len(_LANDING_PAGE)))], _LANDING_PAGE)
_OPTIONS = ("204 No Content", [("Allow", _ALLOW)], b"")


def _health_response(health):
    """Call ``health()`` and turn its ``(healthy, body)`` into a JSON (status, headers, body)."""
    try:
        healthy, payload = health()
        body = json.dumps(payload, default=str, sort_keys=True).encode("utf-8") + b"\n"
        status = "200 OK" if healthy else "503 Service Unavailable"
    except Exception as exc:  # a broken health check must not take the server down
        logger.warning("health check raised %s: %s", type(exc).__name__, exc, exc_info=True)
        payload = {"status": "error",
                   "error": f"health check raised {type(exc).__name__}: {exc}"}
        body = json.dumps(payload, default=str).encode("utf-8") + b"\n"
        status = "503 Service Unavailable"
    return status, [("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store")], body


def _discard_body(environ):
    """Read (and drop) a small request body so the connection can be kept for the next request
    (the server drains a larger one, bounded, before it closes the connection)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if 0 < length <= _MAX_DISCARDED_BODY:
        with contextlib.suppress(OSError):
            environ["wsgi.input"].read(length)


def _bearer_protected(app, tokens):
    """``app`` answering only requests with one of ``tokens`` as a bearer token; 401 otherwise."""

    def protected(environ, start_response):
        presented = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        if presented is not None and tokens.accepts(presented):
            return app(environ, start_response)
        body = b"401 Unauthorized: /metrics needs Authorization: Bearer TOKEN\n"
        challenge = CHALLENGE_INVALID if presented is not None else CHALLENGE
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("Content-Length", str(len(body))),
                                            ("WWW-Authenticate", challenge)])
        return [body] if environ["REQUEST_METHOD"] != "HEAD" else []
    return protected


def _make_app(registry, health, tokens=None):
    """Build the dispatching WSGI app: one dict lookup per request on the fast path."""
    metrics_app = make_wsgi_app(registry)
    if tokens is not None:
        metrics_app = _bearer_protected(metrics_app, tokens)

    def metrics_head(environ, start_response):
        # prometheus_client answers HEAD with 405: render as GET, keep the length, drop the body.
        environ["REQUEST_METHOD"] = "GET"
        captured = []
        body = b"".join(metrics_app(environ, lambda status, headers, exc_info=None:
                                    captured.append((status, headers))))
        status, headers = captured[-1]
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers = list(headers) + [("Content-Length", str(len(body)))]
        start_response(status, headers)
        return []

    routes = {
        "/": lambda: _LANDING,
        "/health": lambda: _health_response(health),
    }

    def app(environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ["PATH_INFO"]
        if method == "GET" or method == "HEAD":
            if path == "/metrics":
                if method == "GET":
                    return metrics_app(environ, start_response)
                return metrics_head(environ, start_response)
            route = routes.get(path)
            status, headers, body = route() if route is not None else _NOT_FOUND
            start_response(status, list(headers))
            return [body] if method == "GET" else []
        if method == "OPTIONS":
            status, headers, body = (_OPTIONS if path == "*" or path == "/metrics" or path in routes
                                     else _NOT_FOUND)
        else:
            _discard_body(environ)
            status, headers, body = _NOT_ALLOWED
        start_response(status, list(headers))
        return [body]

    return app


def start_server(addr, *, registry, health, tls_cert=None, tls_key=None,
                 max_connections=DEFAULT_HTTP_MAX_CONNECTIONS, start=True, tokens=None):
    """Serve ``/metrics``, ``/health`` and ``/`` on ``addr``; returns the :class:`.server.WSGIService`.

    ``addr`` is a ``HOST:PORT`` string (see :func:`parse_addr`) or a ``(host, port)`` tuple.
    ``registry`` is the prometheus_client registry to expose; ``health()`` returns
    ``(healthy, body_dict)``.  ``tls_cert``/``tls_key`` (PEM paths, both or neither) switch
    the port to HTTPS; ``max_connections`` bounds connections and threads; ``start=False`` binds
    without accepting until ``.start()``.  Raises :class:`ConfigError` before any thread starts
    when the address cannot be bound (e.g. already in use) or the certificate cannot be loaded.
    ``tokens`` (an http.auth.TokenSet): /metrics answers only requests carrying one of them as
    ``Authorization: Bearer TOKEN`` (401 otherwise); /health and / stay open.
    """
    service = serve_wsgi(_make_app(registry, health, tokens), addr, tls_cert=tls_cert, tls_key=tls_key,
                         max_connections=max_connections, name="metrics", start=start)
    if tokens is not None and tokens.source is not None:
        service.reloadable.append(("--metrics-token-file", tokens.reload))
    if tls_cert:
        def renew():
            service.use_tls(ssl_context(tls_cert, tls_key, "metrics"))
            return f"certificate {tls_cert}"
        service.reloadable.append(("--metrics-tls-cert", renew))
    logger.info("serving /metrics and /health on %s (at most %d connections)",
                service.url, max_connections)
    return service
