"""The floor of the API benchmark: a bare standard-library WSGI app, served by the same HTTP
server as the REST API (start_api_server: threaded, keep-alive), that stores each POSTed job
as durably as the API's transport does and answers 202, so the ratio measures what the API
does per request beyond the server and the store (parsing and admission, routing, metrics).

Usage: ``_api_floor.py PORT files JOBS_DIR`` (the job's bytes written as JOBS_DIR/JOB_ID.json
like the file transport's submit: a temp file, write, fsync, a link that never replaces, unlink,
fsync of the directory) or ``_api_floor.py PORT redis URL`` (the Redis transport's own submit
script with the arguments it gives it, one ``EVALSHA``), or ``_api_floor.py PORT`` (only the
server: no store).  Prints "ready" once listening, runs until SIGTERM."""

import hashlib
import itertools
import json
import os
import signal
import sys
import threading
from datetime import datetime, timezone


def serve(app, port):
    """The REST API's own server (whichever module this version keeps it in)."""
    try:
        from guestkit_worker.api.server import start_api_server
        return start_api_server(("127.0.0.1", port), app)
    except (ImportError, AttributeError):
        from guestkit_worker.http.server import serve_wsgi
        return serve_wsgi(app, ("127.0.0.1", port))


_names = itertools.count()


def file_store(jobs_dir):
    """Store a job as the file transport's submit does (system/atomic.write_bytes, overwrite
    False, durable)."""
    os.makedirs(jobs_dir, exist_ok=True)
    pid = os.getpid()

    def store(job_id, raw, _doc):
        dest = os.path.join(jobs_dir, f"{job_id}.json")
        tmp = os.path.join(jobs_dir, f".{job_id}.json.{pid}.{next(_names)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, dest)
        os.unlink(tmp)
        dfd = os.open(jobs_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return store


def redis_store(url):
    """Store a job as the Redis transport's submit does: its submit script, its arguments."""
    import redis

    from guestkit_worker.transports.redis.keys import Keys
    from guestkit_worker.transports.redis.scripts import load_scripts
    client = redis.Redis.from_url(url)
    scripts, k = load_scripts(client), Keys("default")

    def store(job_id, raw, doc):
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        execution = doc.get("execution") or {}
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
        cancellable = "0" if execution.get("cancellable") is False else "1"
        outcome, _status, _entry = scripts.submit(
            keys=[k.jobs, k.job(job_id), k.index],
            args=[raw, job_id, hashlib.sha256(canonical.encode()).hexdigest(), doc["operation"],
                  cancellable, str(execution.get("attempt", 1)), now])
        if outcome != b"created":
            raise RuntimeError(f"floor: submit of {job_id} answered {outcome!r}")
    return store


def make_app(store):
    def app(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length)
        body = b'{"accepted": true}\n'
        if store is not None:
            doc = json.loads(raw)
            store(doc["job_id"], raw, doc)
            data = {"job_id": doc["job_id"], "status": "pending"}
            body = json.dumps({"success": True, "data": data}).encode()
        start_response("202 Accepted", [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(body)))])
        return [body]
    return app


def main():
    port, mode = int(sys.argv[1]), sys.argv[2:]
    store = file_store(mode[1]) if mode[:1] == ["files"] else redis_store(mode[1]) if mode[:1] == ["redis"] \
        else None
    server = serve(make_app(store), port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
