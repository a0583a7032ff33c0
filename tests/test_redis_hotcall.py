"""The submission's per-thread Redis connection (transports/redis/hotcall.py) against a real
redis-server: one connection serves a thread's submissions, and a flushed script cache or a
killed connection is answered like the registered script's call (loaded again, reconnected)."""

import threading

import pytest
from conftest import make_job
from redisfixture import require_redis_py

from guestkit_worker.transports.redis import Keys, RedisTransport

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _redis_py():
    require_redis_py()


def _received(client):
    return int(client.info("stats")["total_connections_received"])


def test_a_threads_submissions_share_one_connection(redis_server, pool):
    admin = redis_server.client()
    before = _received(admin)
    t = RedisTransport(redis_server.url, "producer", pool=pool)
    try:
        receipts = [t.submit(make_job(f"hot-job-{i:04d}")).outcome for i in range(30)]
        assert receipts == ["created"] * 30
        # the pool's connection loads the script once (NOSCRIPT on the first EVALSHA), the
        # thread's own connection carries the 30 calls: not one connection per call
        assert _received(admin) - before <= 3
        other = []
        th = threading.Thread(target=lambda: other.append(t.submit(make_job("hot-job-other")).outcome))
        th.start()
        th.join(30)
        assert other == ["created"]
    finally:
        t.close()
    assert admin.xlen(Keys(pool).jobs) == 31


def test_flushed_scripts_and_killed_connections_are_survived(redis_server, pool):
    admin = redis_server.client()
    t = RedisTransport(redis_server.url, "producer", pool=pool)
    try:
        assert t.submit(make_job("hot-flush-0001")).outcome == "created"
        admin.script_flush()          # as after a restart without persistence of scripts
        assert t.submit(make_job("hot-flush-0002")).outcome == "created"
        admin.client_kill_filter(_type="normal", skipme=True)  # every other client's connection
        assert t.submit(make_job("hot-flush-0003")).outcome == "created"
        assert t.submit(make_job("hot-flush-0003")).outcome == "exists"
        assert t.submit(make_job("hot-flush-0003", data={"x": 1})).outcome == "conflict"
    finally:
        t.close()
    assert admin.xlen(Keys(pool).jobs) == 3


def test_a_finished_threads_connection_is_closed(redis_server, pool):
    """The API's connection threads come and go (an idle one ends after a few seconds): the
    connection of a thread that has ended must close with it, or a long-lived API would pile
    up Redis connections burst after burst."""
    import gc

    admin = redis_server.client()

    def clients():
        return int(admin.info("clients")["connected_clients"])
    t = RedisTransport(redis_server.url, "producer", pool=pool)
    try:
        assert t.submit(make_job("hot-churn-0000")).outcome == "created"
        base = clients()
        for burst in range(3):
            threads = [threading.Thread(target=t.submit, args=(make_job(f"hot-churn-b{burst}-{i:03d}"),))
                       for i in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
        gc.collect()
        # 24 threads made a submission each and ended: their connections are gone
        assert clients() <= base + 1, (clients(), base)
    finally:
        t.close()
    assert admin.xlen(Keys(pool).jobs) == 25


# -- a call whose reply never came -----------------------------------------------------------

def _post(conn, doc):
    """POST a job document on a kept-alive connection; (status, decoded body)."""
    import json
    conn.request("POST", "/api/v1/jobs", body=json.dumps(doc).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_a_post_redis_took_but_never_answered_is_outcome_unknown_and_runs_once(tmp_path, pool):
    """Redis stopped (SIGSTOP) while the API's submission is in flight: the EVALSHA reached it,
    no reply came.  The answer says the outcome is unknown (not "nothing was changed", which
    would send a client to resubmit under a new id and run the job twice); once Redis runs
    again the job exists, the same document again answers so, and it runs once."""
    import http.client
    import signal

    from apikit import Served
    from conftest import Dirs, cli
    from faultkit import journal_job, plugin_env, read_journal
    from redisfixture import start_redis

    server = start_redis(tmp_path / "redis")
    env = plugin_env(tmp_path)
    journal = tmp_path / "journal"
    where = ["--transport", "redis", "--redis-url", server.url, "--pool", pool]
    api = Served("api", Dirs(tmp_path / "api"), *where, env=env)
    lost = journal_job("hot-lost-0001", journal)
    try:
        host, port = api.url.split("://")[1].rsplit(":", 1)
        # one kept-alive connection: the API thread that took the first POST, its Redis
        # connection open, takes the second (a new one would stall in the handshake instead)
        conn = http.client.HTTPConnection(host, int(port), timeout=90)
        assert _post(conn, journal_job("hot-warm-0001", journal))[0] == 202
        server.proc.send_signal(signal.SIGSTOP)
        try:
            status, body = _post(conn, lost)
        finally:
            server.proc.send_signal(signal.SIGCONT)
            conn.close()
        assert status == 504 and body["error"] == "OUTCOME_UNKNOWN", body
        assert "nothing was changed" not in body["message"], body
        assert "same document" in body["message"] and "never run twice" in body["message"], body
        assert "\n" not in body["message"]
        from apikit import call
        again = call(api.url, "POST", "/api/v1/jobs", doc=lost)
        assert again.status == 200 and again.json["data"]["status"] == "pending", again  # it exists
        ran = cli("run", "--once", *where, "--worker-id", f"{pool}-w", "--metrics-enabled", "false",
                  "--work-dir", str(tmp_path / "work"), env=env, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert read_journal(journal) == {"hot-warm-0001": [1], "hot-lost-0001": [1]}
        assert server.client().zcard(Keys(pool).index) == 2  # two jobs, never a third
    finally:
        api.stop()
        server.stop()


def test_submit_tells_an_unknown_outcome_apart_over_redis_and_over_the_api(tmp_path, pool):
    """``CLIENT PAUSE WRITE``: Redis holds every script call without answering, as an
    overloaded or stalled server would.  ``submit`` over Redis, over the API and with --wait
    each say in one line that the job may or may not be queued and exit 7 (not 6, "unavailable",
    or 2); each file submitted again goes through, and every job runs once."""
    import json
    import threading

    from apikit import Served
    from conftest import Dirs, cli
    from faultkit import journal_job, plugin_env, read_journal
    from redisfixture import start_redis

    server = start_redis(tmp_path / "redis")
    env = plugin_env(tmp_path)
    journal = tmp_path / "journal"
    where = ["--transport", "redis", "--redis-url", server.url, "--pool", pool]
    files = {}
    for name in ("warm", "plain", "api", "wait"):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(journal_job(f"hot-pause-{name}", journal)))
    done = {}

    def submit(name):
        done[name] = cli(*ways[name], env=env, timeout=90)
    api = None
    try:
        api = Served("api", Dirs(tmp_path / "api"), *where, env=env)
        ways = {"plain": ("submit", str(files["plain"]), *where),
                "api": ("submit", "--api", api.url, str(files["api"])),
                "wait": ("submit", "--wait", "5", str(files["wait"]), *where)}
        warm = cli("submit", str(files["warm"]), *where, env=env, timeout=60)
        assert warm.returncode == 0, warm.stderr  # the scripts are loaded
        server.cli("CLIENT", "PAUSE", "120000", "WRITE")
        try:
            threads = [threading.Thread(target=submit, args=(name,)) for name in ways]
            for th in threads:
                th.start()
            for th in threads:
                th.join(100)
        finally:
            server.cli("CLIENT", "UNPAUSE")
        assert sorted(done) == ["api", "plain", "wait"]
        for name, p in done.items():
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 7 and len(lines) == 1 and "Traceback" not in p.stderr, (name, p.stderr)
            assert f"hot-pause-{name}" in lines[0] and "nothing was changed" not in lines[0], (name, lines)
        assert "may or may not be queued" in done["plain"].stderr and "submit the same file again" in \
            done["plain"].stderr, done["plain"].stderr
        for name in ("api", "wait"):
            assert "OUTCOME_UNKNOWN" in done[name].stderr and "never run twice" in done[name].stderr
        ways["wait"] = ("submit", str(files["wait"]), *where)  # no worker runs yet: no waiting
        for name in ways:  # the same file again: queued now (or found queued)
            again = cli(*ways[name], env=env, timeout=90)
            assert again.returncode in (0, 1) and "Traceback" not in again.stderr, (name, again.stderr)
        ran = cli("run", "--once", *where, "--worker-id", f"{pool}-w", "--metrics-enabled", "false",
                  "--work-dir", str(tmp_path / "work"), env=env, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert read_journal(journal) == {f"hot-pause-{n}": [1] for n in ("warm", "plain", "api", "wait")}
    finally:
        if api is not None:
            api.stop()
        server.stop()
