"""The floor of the API benchmark: a bare standard-library WSGI app that reads the request body
and answers 202, served by the same HTTP server as the REST API (start_api_server: threaded,
keep-alive), so the ratio measures what the API does per request beyond the server.
Usage: _api_floor.py PORT; prints "ready" once listening, runs until SIGTERM."""

import signal
import sys
import threading


def serve(app, port):
    """The REST API's own server (whichever module this version keeps it in)."""
    try:
        from guestkit_worker.api.server import start_api_server
        return start_api_server(("127.0.0.1", port), app)
    except (ImportError, AttributeError):
        from guestkit_worker.http.server import serve_wsgi
        return serve_wsgi(app, ("127.0.0.1", port))

BODY = b'{"accepted": true}\n'


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def main():
    server = serve(app, int(sys.argv[1]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
