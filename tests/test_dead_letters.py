"""Dead letters end to end, on the file transport and on Redis (a real redis-server): a worker
rejects a document that is not JSON and one over its --max-job-size; ``dead list/show/requeue/
purge`` and the /api/v1/dead endpoints show them, refuse to queue the one that still cannot
run, queue the other again (a worker with a larger limit then completes it) and purge."""

import json
import os
import re
from urllib.parse import quote

import pytest
from apikit import call, scrape_values, served, write_tokens  # noqa: F401 - served is a fixture
from conftest import cli, make_job, write_job

pytestmark = pytest.mark.integration

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
BAD = b'{"job_id": "never-closed", '
BIG_ID = "dead-big-0001"
SMALL_LIMIT = "300"


class Queue:
    """The flags and a raw producer of one transport (files in ``dirs``, or a Redis pool)."""

    def __init__(self, kind, dirs, request):
        self.kind, self.dirs = kind, dirs
        self.flags = ["--jobs-dir", dirs.jobs, "--results-dir", dirs.results]
        if kind == "redis":
            from redisfixture import require_redis_py
            require_redis_py()
            self.server = request.getfixturevalue("redis_server")
            self.pool = request.getfixturevalue("pool")
            self.flags += ["--transport", "redis", "--redis-url", self.server.url, "--pool", self.pool]

    def inject(self, data, name):
        """Queue raw bytes the way a producer that bypasses submit does."""
        if self.kind == "files":
            write_job(self.dirs.jobs, data, name=f"{name}.json")
            return
        from guestkit_worker.transports.redis import Keys
        self.server.client().xadd(Keys(self.pool).jobs, {"job": data})

    def run_once(self, *extra):
        ran = cli("run", "--once", *self.flags, "--work-dir", self.dirs.work, "--metrics-enabled", "false",
                  "--worker-id", "dead-w", *extra, timeout=120)
        assert ran.returncode in (0, 1), ran.stderr
        return ran

    def dead(self, *args):
        return cli("dead", *args, *self.flags, timeout=60)


@pytest.fixture(params=["files", "redis"])
def queue(request, dirs):
    return Queue(request.param, dirs, request)


def _two_dead_letters(queue):
    """A not-JSON document and one over the small limit, rejected by a worker: {reason: entry}."""
    big = json.dumps(make_job(BIG_ID, data={"pad": "p" * 400})).encode()
    queue.inject(BAD, "dead-bad")
    queue.inject(big, BIG_ID)
    queue.run_once("--max-job-size", SMALL_LIMIT)
    listed = queue.dead("list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["entries"]
    return {e["reason"]: e for e in entries}, big


def test_cli_lists_shows_refuses_requeues_and_purges(queue):
    found, big = _two_dead_letters(queue)
    assert sorted(found) == ["not_json", "too_large"], found
    for e in found.values():
        assert RFC3339_UTC.fullmatch(e["dead_at"]) and e["detail"], e
    assert found["not_json"]["job_id"] is None and found["too_large"]["job_id"] in (None, BIG_ID)
    bad, large = found["not_json"]["entry"], found["too_large"]["entry"]
    lines = queue.dead("list").stdout.splitlines()  # newest first: the two were rejected at once
    assert sorted(line.split("\t")[:2] for line in lines) == sorted([[large, "too_large"], [bad, "not_json"]])

    shown = queue.dead("show", bad)
    assert shown.returncode == 0 and json.loads(shown.stdout)["document"] == BAD.decode()

    refused = queue.dead("requeue", bad)
    assert refused.returncode == 5, refused
    [line] = refused.stderr.splitlines()
    assert "NOT_REQUEUEABLE" in line and "not_json" in line, line

    requeued = queue.dead("requeue", large)
    assert requeued.returncode == 0 and requeued.stdout == f"{large} requeued {BIG_ID}\n", requeued
    queue.run_once()
    result = cli("result", BIG_ID, *queue.flags, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout)["status"] == "completed", result

    purged = queue.dead("purge", "--all")
    assert purged.returncode == 0 and purged.stdout == f"{bad} purged\n", purged
    assert queue.dead("list").stdout == ""
    gone = queue.dead("show", bad)
    assert gone.returncode == 3 and "NOT_FOUND" in gone.stderr, gone
    assert queue.dead("purge", "\u00e9t\u00e9").returncode == 2
    assert queue.dead("requeue").returncode == 2  # neither ENTRY nor --all


def test_api_lists_pages_shows_refuses_requeues_and_purges(queue, served, tmp_path):
    found, _ = _two_dead_letters(queue)
    bad, large = found["not_json"]["entry"], found["too_large"]["entry"]
    tokens = write_tokens(tmp_path, "dead-token")
    api = served("run", *queue.flags[4:], "--api-token-file", tokens, metrics=True)

    def get(method, path):
        return call(api.url, method, path, token="dead-token")

    assert call(api.url, "GET", "/api/v1/dead").status == 401
    first = get("GET", "/api/v1/dead?limit=1")
    assert first.status == 200, first
    page = first.json["data"]
    assert len(page["entries"]) == 1 and page["next_page_token"]
    assert set(page["entries"][0]) == {"entry", "reason", "detail", "job_id", "dead_at"}
    second = get("GET", f"/api/v1/dead?limit=1&page_token={quote(page['next_page_token'])}").json["data"]
    assert len(second["entries"]) == 1 and second["next_page_token"] is None
    assert {page["entries"][0]["entry"], second["entries"][0]["entry"]} == {bad, large}
    wrong = get("GET", "/api/v1/dead?page_token=nope%2F..")
    assert wrong.status == 400 and wrong.json["details"]["field"] == "page_token", wrong

    shown = get("GET", f"/api/v1/dead/{quote(bad)}")
    assert shown.status == 200 and shown.json["data"]["document"] == BAD.decode()
    refused = get("POST", f"/api/v1/dead/{quote(bad)}/requeue")
    assert refused.status == 422 and refused.json["error"] == "NOT_REQUEUEABLE", refused
    assert refused.json["details"]["reason"] == "not_json"
    over_api = ("--api", api.url, "--api-token-file", tokens)
    listed = cli("dead", "list", "--json", *over_api, timeout=60)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)["entries"]) == 2, listed
    assert cli("dead", "requeue", bad, *over_api, timeout=60).returncode == 5
    assert cli("dead", "show", "no-such-entry", *over_api, timeout=60).returncode == 3

    requeued = get("POST", f"/api/v1/dead/{quote(large)}/requeue")
    assert requeued.status == 200 and requeued.headers["location"] == f"/api/v1/jobs/{BIG_ID}", requeued
    result = get("GET", f"/api/v1/jobs/{BIG_ID}/result?wait=60")
    assert result.status == 200 and result.json["data"]["status"] == "completed", result

    assert get("DELETE", f"/api/v1/dead/{quote(bad)}").status == 200
    again = get("DELETE", f"/api/v1/dead/{quote(bad)}")
    assert again.status == 404 and again.json["details"]["field"] == "entry", again
    assert get("GET", "/api/v1/dead").json["data"] == {"entries": [], "next_page_token": None}
    for hostile, status in (("%C3%A9t%C3%A9", 400), ("..", 404), ("..%2F..%2Fetc%2Fpasswd", 404),
                            ("x" * 300, 404), ("%00", 400)):
        answer = get("DELETE", f"/api/v1/dead/{hostile}")
        assert answer.status == status and answer.json["success"] is False, (hostile, answer)
    values = scrape_values(api.metrics_url)
    assert values["guestkit_worker_dead_letters_requeued_total"] == 1
    assert values["guestkit_worker_dead_letters_purged_total"] == 1


def _dead_reasons(queue):
    from guestkit_worker.transports.redis import Keys
    rows = queue.server.client().xrange(Keys(queue.pool).dead)
    return [(f[b"reason"].decode(), f.get(b"job_id", b"-").decode()) for _, f in rows]


def test_redis_a_job_dead_lettered_before_it_ran_is_no_duplicate(dirs, request, tmp_path):
    """A job routed to another pool is dead-lettered by this pool's worker before it runs: its
    job id is free again, for a corrected submission and for a producer's own XADD (neither is
    "submitted before" nor a duplicate), and both then run."""
    queue = Queue("redis", dirs, request)
    first, second = "routed-away-0001", "routed-away-0002"
    for job_id in (first, second):
        doc = tmp_path / f"{job_id}.json"
        doc.write_text(json.dumps(make_job(job_id, routing={"worker_pool": "elsewhere"})))
        assert cli("submit", str(doc), *queue.flags, timeout=60).returncode == 0
    queue.run_once()
    assert sorted(_dead_reasons(queue)) == [("not_for_this_pool", first), ("not_for_this_pool", second)]

    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(make_job(first)))
    again = cli("submit", str(fixed), *queue.flags, timeout=60)
    assert again.returncode == 0, again
    queue.inject(json.dumps(make_job(second)).encode(), second)
    queue.run_once()
    for job_id in (first, second):
        result = cli("result", job_id, *queue.flags, timeout=60)
        assert result.returncode == 0 and json.loads(result.stdout)["status"] == "completed", result
    assert len(_dead_reasons(queue)) == 2  # the second XADD was no duplicate_job_id


def test_redis_requeue_of_a_duplicate_is_refused_and_of_an_unrun_job_follows_it(dirs, request):
    """The requeue script decides in one step: a duplicate_job_id dead letter of a job that
    completed is refused (nothing queued); the not_for_this_pool dead letter of a job that never
    ran is queued again and its job state follows the new entry (pending)."""
    from guestkit_worker.transports.redis import RedisTransport
    queue = Queue("redis", dirs, request)
    t = RedisTransport(queue.server.url, "dead-direct", pool=queue.pool, lease_seconds=5)
    t.open()
    try:
        doc = make_job("dup-job-00001")
        queue.inject(json.dumps(doc).encode(), "dup-1")
        [d] = t.fetch(1, 5.0)
        queue.inject(json.dumps(doc).encode(), "dup-2")
        assert t.fetch(1, 1.0) == []  # the second entry of the id: dead-lettered at admission
        from guestkit_worker.transports.base import Outcome
        o = Outcome(d, "completed", result={"job_id": doc["job_id"], "status": "completed",
                                            "completed_at": "2026-11-01T00:00:01Z", "error": None})
        t.commit([o])
        assert o.error is None
        [dup] = t.dead_list().entries
        assert dup.reason == "duplicate_job_id" and dup.job_id == doc["job_id"], dup
        refused = t.dead_requeue(dup.entry)
        assert (refused.outcome, refused.reason) == ("refused", "duplicate_job_id"), refused
        assert t.depth() == 0 and t.dead_get(dup.entry) is not None

        routed = make_job("routed-back-001", routing={"worker_pool": "elsewhere"})
        t.submit(routed)
        [r] = t.fetch(1, 5.0)
        t.release(r, not_for_me=True, other_pool=True)
        assert t.job_status(routed["job_id"]).status == "failed"
        [away] = [e for e in t.dead_list().entries if e.reason == "not_for_this_pool"]
        assert t.dead_requeue(away.entry).outcome == "queued"
        assert t.job_status(routed["job_id"]).status == "pending" and t.depth() == 1
    finally:
        t.close()


def test_redis_a_listing_never_carries_the_documents(dirs, request):
    """Listing 20 dead letters of 2 MB each sends their reasons, not their 40 MB of documents
    (Redis's own count of bytes sent); showing one gives its size, not 2 MB of text."""
    from guestkit_worker.transports.redis import Keys, RedisTransport
    queue = Queue("redis", dirs, request)
    client = queue.server.client()
    big = b'{"job_id": "huge-dead-0001", "pad": "' + b"p" * (2 << 20) + b'"}'
    for i in range(20):
        client.xadd(Keys(queue.pool).dead, {"reason": "too_large", "detail": "2 MB", "entry": f"1-{i}",
                                            "job": big})
    t = RedisTransport(queue.server.url, "dead-lister", pool=queue.pool)
    try:
        before = client.info("stats")["total_net_output_bytes"]
        page = t.dead_list(limit=20)
        sent = client.info("stats")["total_net_output_bytes"] - before
        assert len(page.entries) == 20 and sent < 100_000, sent
        assert page.entries[0].job_id is None  # not read from a document over 64 KiB
    finally:
        t.close()
    shown = queue.dead("show", page.entries[0].entry)
    data = json.loads(shown.stdout)
    assert data["size"] == len(big) and data["document"] is None, shown


def test_redis_requeue_goes_by_the_documents_job_id_not_the_entrys_field(dirs, request):
    """A dead letter whose job_id field names another job than its document (a producer's own
    XADD) is queued under the document's id; the other job's state is left alone."""
    from guestkit_worker.transports.redis import Keys, RedisTransport
    queue = Queue("redis", dirs, request)
    t = RedisTransport(queue.server.url, "dead-field", pool=queue.pool)
    try:
        other = make_job("field-named-0001")
        t.submit(other)
        mine = make_job("document-says-01")
        queue.server.client().xadd(Keys(queue.pool).dead, {
            "reason": "rejected", "detail": "x", "entry": "1-1", "job": json.dumps(mine),
            "job_id": other["job_id"]})
        [letter] = t.dead_list().entries
        done = t.dead_requeue(letter.entry)
        assert (done.outcome, done.job_id) == ("queued", mine["job_id"]), done
        assert t.job_status(mine["job_id"]).status == "pending"
        assert t.job_status(other["job_id"]).status == "pending" and t.depth() == 2
    finally:
        t.close()


def test_files_a_dead_letter_whose_name_is_not_ascii_is_listed_and_addressed(dirs, request):
    """Job files named in another script (or with bytes that are not UTF-8, or a %) are listed
    with %XX escapes, and show, requeue and purge find them by that one spelling."""
    queue = Queue("files", dirs, request)
    for name in ("\u00e9t\u00e9-1", "100%-2"):
        queue.inject(b"not json", name)
    with open(os.path.join(dirs.jobs, b"raw-\xff-3.json".decode("utf-8", "surrogateescape")), "wb") as fh:
        fh.write(b"[]")
    queue.run_once()
    listed = queue.dead("list").stdout.splitlines()
    entries = sorted(line.split("\t")[0] for line in listed)
    assert entries == ["%C3%A9t%C3%A9-1.json", "100%25-2.json", "raw-%FF-3.json"], listed
    shown = queue.dead("show", "raw-%FF-3.json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["document"] == "[]", shown
    purged = queue.dead("purge", "%C3%A9t%C3%A9-1.json", "100%25-2.json", "raw-%FF-3.json")
    assert purged.returncode == 0 and queue.dead("list").stdout == "", purged
    assert os.listdir(os.path.join(dirs.jobs, "failed")) == []
    assert queue.dead("show", "100%-2.json").returncode == 3  # not its spelling


def test_files_a_directory_named_like_a_job_file_is_a_dead_letter_that_purges(dirs, request):
    """A directory named NAME.json in jobs/ is rejected unread and kept in failed/: listed as
    unreadable, refused a requeue, and purged with what it holds (no link inside followed)."""
    queue = Queue("files", dirs, request)
    inside = os.path.join(dirs.jobs, "adir.json")
    os.makedirs(inside)
    with open(os.path.join(inside, "inner"), "w") as fh:
        fh.write("x")
    keep = os.path.join(dirs.base, "keep-me")
    with open(keep, "w") as fh:
        fh.write("kept")
    os.symlink(keep, os.path.join(inside, "link"))
    queue.run_once()
    [line] = queue.dead("list").stdout.splitlines()
    assert line.split("\t")[:2] == ["adir.json", "unreadable"], line
    assert queue.dead("requeue", "adir.json").returncode == 5
    purged = queue.dead("purge", "adir.json")
    assert purged.returncode == 0 and purged.stdout == "adir.json purged\n", purged
    assert os.listdir(os.path.join(dirs.jobs, "failed")) == []
    with open(keep) as fh:
        assert fh.read() == "kept"
