"""Every row of the REST API's table against real processes: ``guestkit-worker api`` (the API
alone, so jobs stay pending) and ``guestkit-worker run --api-addr`` (the API beside the jobs)."""

import json
import os
import subprocess

import pytest
from apikit import call, served  # noqa: F401 (fixture)
from conftest import cli, make_job, require_tool, wait_for

pytestmark = pytest.mark.integration

JOBS = "/api/v1/jobs"


def job_files(dirs):
    return sorted(n for n in os.listdir(dirs.jobs) if n.endswith(".json"))


# -- POST /api/v1/jobs ---------------------------------------------------------------------

def test_submit_202_then_retry_200_then_other_document_409(dirs, served):
    api = served("api")
    doc = make_job("job-rows-00001")
    first = call(api.url, "POST", JOBS, doc=doc)
    assert first.status == 202
    assert first.headers["location"] == f"{JOBS}/job-rows-00001"
    assert first.json == {"success": True, "data": {"job_id": "job-rows-00001", "status": "pending"}}
    again = call(api.url, "POST", JOBS, doc=doc)
    assert again.status == 200 and again.json["data"] == {"job_id": "job-rows-00001", "status": "pending"}
    assert job_files(dirs) == ["job-rows-00001.json"], "a retried POST made no second job"
    other = call(api.url, "POST", JOBS, doc=dict(doc, created_at="2026-11-02T00:00:00Z"))
    assert other.status == 409
    assert other.json["error"] == "JOB_ID_CONFLICT" and other.json["details"]["field"] == "job_id"
    with open(os.path.join(dirs.jobs, "job-rows-00001.json")) as fh:
        assert json.load(fh) == doc, "the queued document is the one posted first"


def test_retry_after_the_job_finished_answers_its_final_status(dirs, served):
    worker = served("run")
    doc = make_job("job-rows-00002")
    assert call(worker.url, "POST", JOBS, doc=doc).status == 202
    assert call(worker.url, "GET", f"{JOBS}/job-rows-00002/result?wait=30").status == 200
    again = call(worker.url, "POST", JOBS, doc=doc)
    assert again.status == 200 and again.json["data"]["status"] == "completed"
    assert len(os.listdir(os.path.join(dirs.jobs, "done"))) == 1, "the job ran once"


@pytest.mark.parametrize("change, field, code", [
    ({"execution": {"priority": 12}}, "execution.priority", "INVALID_JOB"),
    ({"operation": "no.such-op", "payload": {"type": "no.such-op.v1", "data": {}}}, "operation",
     "HANDLER_NOT_FOUND"),
    ({"kind": 3}, "kind", "INVALID_JOB"),
    ({"job_id": "../../etc"}, "job_id", "INVALID_JOB"),
])
def test_invalid_document_is_422_naming_the_field(dirs, served, change, field, code):
    api = served("api")
    reply = call(api.url, "POST", JOBS, doc=dict(make_job("job-rows-00003"), **change))
    assert reply.status == 422, reply
    assert reply.json["success"] is False and reply.json["error"] == code
    assert reply.json["details"]["field"] == field and reply.json["message"].startswith(field)
    assert job_files(dirs) == []


def test_image_outside_allow_path_is_422_path_not_allowed(dirs, served, tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    api = served("api", "--allow-path", str(allowed))
    doc = make_job("job-rows-00004", operation="guestkit.inspect",
                   data={"image": {"path": "/etc/passwd", "format": "raw"}})
    reply = call(api.url, "POST", JOBS, doc=doc)
    assert reply.status == 422 and reply.json["error"] == "PATH_NOT_ALLOWED"
    assert "payload.data.image.path" in reply.json["message"]


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"   "])
def test_body_that_is_not_json_is_400(dirs, served, body):
    api = served("api")
    reply = call(api.url, "POST", JOBS, body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.json["error"] == "INVALID_JSON"


def test_size_and_media_type_limits_of_the_real_process(dirs, served):
    api = served("api", "--max-job-size", "2000")
    big = make_job("job-rows-00005", data={"pad": "x" * 3000})
    reply = call(api.url, "POST", JOBS, doc=big)
    assert reply.status == 413 and reply.json["details"]["limit"] == 2000
    reply = call(api.url, "POST", JOBS, body=json.dumps(make_job()).encode(),
                 headers={"Content-Type": "text/plain"})
    assert reply.status == 415
    assert job_files(dirs) == []


# -- GET /api/v1/jobs/ID and /result -------------------------------------------------------

def test_status_of_pending_then_completed_job_and_unknown_404(dirs, served):
    api = served("api")
    assert call(api.url, "POST", JOBS, doc=make_job("job-rows-00006")).status == 202
    pending = call(api.url, "GET", f"{JOBS}/job-rows-00006")
    assert pending.status == 200
    assert set(pending.json["data"]) == {"job_id", "status", "operation", "attempt", "worker_id",
                                         "submitted_at", "started_at", "completed_at", "error"}
    assert pending.json["data"]["status"] == "pending" and pending.json["data"]["operation"] == "system.echo"
    not_yet = call(api.url, "GET", f"{JOBS}/job-rows-00006/result")
    assert not_yet.status == 202 and not_yet.json["data"] == {"job_id": "job-rows-00006", "status": "pending"}
    waited = call(api.url, "GET", f"{JOBS}/job-rows-00006/result?wait=1")
    assert waited.status == 202, "still pending after waiting a second: no worker runs"
    for path in ("/no-such-job-1", "/no-such-job-1/result", "/no-such-job-1/progress", "/..%2f..%2fetc"):
        missing = call(api.url, "GET", JOBS + path)
        assert missing.status == 404 and missing.json["error"] == "NOT_FOUND"
    worker = served("run")
    done = call(worker.url, "GET", f"{JOBS}/job-rows-00006/result?wait=30")
    assert done.status == 200
    assert done.json["data"] == dirs.result("job-rows-00006"), "the stored result, unchanged"
    status = call(api.url, "GET", f"{JOBS}/job-rows-00006").json["data"]
    assert status["status"] == "completed" and status["attempt"] == 1 and status["completed_at"]
    assert status["submitted_at"] == pending.json["data"]["submitted_at"] != "2026-11-01T00:00:00Z"


@pytest.mark.parametrize("query", ["wait=abc", "wait=-1", "wait=nan"])
def test_bad_wait_is_400(dirs, served, query):
    api = served("api")
    call(api.url, "POST", JOBS, doc=make_job("job-rows-00007"))
    reply = call(api.url, "GET", f"{JOBS}/job-rows-00007/result?{query}")
    assert reply.status == 400 and reply.json["details"]["field"] == "wait"


def test_failed_job_result_is_200_with_its_error(dirs, served):
    worker = served("run")
    doc = make_job("job-rows-00008", operation="test.raise", data={"message": "kaboom"})
    assert call(worker.url, "POST", JOBS, doc=doc).status == 202
    reply = call(worker.url, "GET", f"{JOBS}/job-rows-00008/result?wait=30")
    assert reply.status == 200 and reply.json["data"]["status"] == "failed"
    assert call(worker.url, "GET", f"{JOBS}/job-rows-00008").json["data"]["status"] == "failed"


# -- DELETE /api/v1/jobs/ID ----------------------------------------------------------------

def test_cancel_pending_job_200_it_never_runs_then_409(dirs, served):
    api = served("api")
    call(api.url, "POST", JOBS, doc=make_job("job-rows-00009"))
    reply = call(api.url, "DELETE", f"{JOBS}/job-rows-00009")
    assert reply.status == 200 and reply.json["data"]["status"] == "cancelled"
    assert dirs.result("job-rows-00009")["status"] == "cancelled"
    assert call(api.url, "GET", f"{JOBS}/job-rows-00009").json["data"]["status"] == "cancelled"
    assert call(api.url, "GET", f"{JOBS}/job-rows-00009/result").json["data"]["status"] == "cancelled"
    again = call(api.url, "DELETE", f"{JOBS}/job-rows-00009")
    assert again.status == 409 and again.json["error"] == "JOB_FINISHED"
    assert call(api.url, "DELETE", f"{JOBS}/no-such-job-2").status == 404
    cli("run", "--once", *dirs.args(), "--metrics-enabled", "false", check=0)
    assert job_files(dirs) == [] and dirs.result("job-rows-00009")["status"] == "cancelled"


def test_cancel_running_cancellable_job_202_then_its_result_is_cancelled(dirs, served):
    worker = served("run")
    call(worker.url, "POST", JOBS,
         doc=make_job("job-rows-00012", operation="test.sleep", data={"seconds": 120}))
    wait_for(lambda: call(worker.url, "GET", f"{JOBS}/job-rows-00012").json["data"]["status"] == "running",
             timeout=30, what="the job to run")
    reply = call(worker.url, "DELETE", f"{JOBS}/job-rows-00012")
    assert reply.status == 202 and reply.json["data"] == {"job_id": "job-rows-00012", "status": "running",
                                                          "cancel_requested": True}
    result = call(worker.url, "GET", f"{JOBS}/job-rows-00012/result?wait=30", timeout=60)
    assert result.status == 200 and result.json["data"]["status"] == "cancelled", result
    assert result.json["data"]["error"]["code"] == "CANCELLED"
    assert call(worker.url, "GET", f"{JOBS}/job-rows-00012").json["data"]["status"] == "cancelled"
    assert call(worker.url, "DELETE", f"{JOBS}/job-rows-00012").status == 409


def test_cancel_running_not_cancellable_job_is_409(dirs, served):
    worker = served("run")
    doc = make_job("job-rows-00010", operation="test.sleep", data={"seconds": 30},
                   execution={"cancellable": False})
    call(worker.url, "POST", JOBS, doc=doc)
    wait_for(lambda: call(worker.url, "GET", f"{JOBS}/job-rows-00010").json["data"]["status"] == "running",
             timeout=30, what="the job to run")
    reply = call(worker.url, "DELETE", f"{JOBS}/job-rows-00010")
    assert reply.status == 409 and reply.json["error"] == "NOT_CANCELLABLE"
    assert reply.json["details"]["field"] == "execution.cancellable"


# -- GET /api/v1/jobs (paging) -------------------------------------------------------------

def test_list_pages_and_filters(dirs, served):
    api = served("api")
    ids = [f"job-page-{i:05d}" for i in range(5)]
    for job_id in ids:
        assert call(api.url, "POST", JOBS, doc=make_job(job_id)).status == 202
    assert call(api.url, "DELETE", f"{JOBS}/{ids[0]}").status == 200
    seen, token = [], None
    for _ in range(5):
        reply = call(api.url, "GET", f"{JOBS}?limit=2" + (f"&page_token={token}" if token else ""))
        assert reply.status == 200 and len(reply.json["data"]["jobs"]) <= 2
        seen += [j["job_id"] for j in reply.json["data"]["jobs"]]
        token = reply.json["data"]["next_page_token"]
        if not token:
            break
    assert sorted(seen) == ids and len(seen) == 5
    cancelled = call(api.url, "GET", f"{JOBS}?status=cancelled").json["data"]
    assert [j["job_id"] for j in cancelled["jobs"]] == [ids[0]] and cancelled["next_page_token"] is None
    assert len(call(api.url, "GET", f"{JOBS}?status=pending&operation=system.echo").json["data"]["jobs"]) == 4
    assert call(api.url, "GET", f"{JOBS}?operation=guestkit.inspect").json["data"]["jobs"] == []
    for query, field in [("limit=501", "limit"), ("limit=0", "limit"), ("status=done", "status"),
                         ("page_token=%%%", "page_token")]:
        bad = call(api.url, "GET", f"{JOBS}?{query}")
        assert bad.status == 400 and bad.json["details"]["field"] == field, (query, bad)


def _b64(raw):
    import base64
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: page tokens no transport made: nested, huge or non-finite numbers, wrong types, not base64,
#: not UTF-8, and near-misses of the Redis transport's SCORE:JOB_ID form
HOSTILE_TOKENS = [
    _b64(b"[" * 3000), _b64(b'[1e400,"a"]'), _b64(b'[-1e400,"a"]'), _b64(b'[NaN,"job-page-00001"]'),
    _b64(b'[Infinity,"a"]'), _b64(b'[-1,"job-page-00001"]'), _b64(b"[" + b"9" * 2900 + b',"a"]'),
    _b64(b"[1.5,\"a\"]"), _b64(b'[true,"a"]'), _b64(b'["12",["a"]]'), _b64(b"[1,null]"), _b64(b"[1,2,3]"),
    _b64(b'{"a":1,"b":2}'), _b64(b'"ab"'), _b64(b"null"), _b64(b'[1,"' + b"x" * 2800 + b'"]'),
    _b64(b"\xff\xfe\x00[1,"), _b64(b'[1,"\xff\xfe"]'), "%%%", "!!!!", "====", "a", "A" * 4000,
    "\u00e9t\u00e9", "\x00", "\ufffd", "-5:job-page-00001", "1e400:job-x", "nan:job-x", "inf:job-x",
    "9" * 4000 + ":x",
    "1_000:job-page-00001", "\u0663\u0663:job-page-00001", " 12:job-page-00001", ":job-x", "12:", "12",
    "12:" + "x" * 3000,
]


@pytest.mark.parametrize("transport", ["files", "redis"])
def test_hostile_page_tokens_are_400_never_5xx(dirs, served, transport, request):
    """Every malformed page_token is a one-line 400 naming page_token, over both transports;
    nothing is counted as a server error (the ApiServerErrors alert's 5xx share)."""
    from urllib.parse import quote

    from apikit import scrape_values
    extra = []
    if transport == "redis":
        from redisfixture import require_redis_py
        require_redis_py()
        extra = ["--transport", "redis", "--redis-url", request.getfixturevalue("redis_url"),
                 "--pool", request.getfixturevalue("pool")]
    api = served("api", *extra, metrics=True)
    for i in range(3):
        assert call(api.url, "POST", JOBS, doc=make_job(f"job-page-{i:05d}")).status == 202
    token = call(api.url, "GET", f"{JOBS}?limit=2").json["data"]["next_page_token"]
    assert len(call(api.url, "GET", f"{JOBS}?limit=2&page_token={token}").json["data"]["jobs"]) == 1
    answers = {}
    for bad in HOSTILE_TOKENS:
        reply = call(api.url, "GET", f"{JOBS}?limit=2&page_token={quote(bad, safe='')}")
        answers[bad[:40]] = (reply.status, reply.json.get("details", {}).get("field"),
                             reply.json.get("message", "").count("\n"))
    wrong = {k: v for k, v in answers.items() if v != (400, "page_token", 0)}
    assert not wrong, f"{len(wrong)} of {len(answers)} tokens: {sorted(set(wrong.values()))}: {sorted(wrong)}"
    for raw_token in ("%ff%fe%00", "%c3%28", "%80" * 100):  # bytes that are not UTF-8
        reply = call(api.url, "GET", f"{JOBS}?page_token={raw_token}")
        assert reply.status == 400 and reply.json["details"]["field"] == "page_token", reply
    values = scrape_values(api.metrics_url)
    served_errors = {k: v for k, v in values.items()
                     if k.startswith("guestkit_api_requests_total{") and 'code="5' in k}
    assert served_errors == {}, served_errors
    bad_requests = 'guestkit_api_requests_total{code="400",method="GET",route="/api/v1/jobs"}'
    assert values[bad_requests] == len(HOSTILE_TOKENS) + 3
    assert "Traceback" not in api.log()


# -- capabilities and health ----------------------------------------------------------------

def test_capabilities(dirs, served):
    worker = served("run", "--worker-id", "w-caps-1", "--pool", "gpu", "--max-concurrent", "3")
    data = call(worker.url, "GET", "/api/v1/capabilities").json["data"]
    assert data["worker_id"] == "w-caps-1" and data["pool"] == "gpu" and data["max_concurrent_jobs"] == 3
    ops = {op["name"]: op for op in data["operations"]}
    assert ops["system.echo"]["engine_available"] is True
    assert {"guestkit.inspect", "guestkit.convert", "test.sleep"} <= set(ops)
    assert data["version"] and data["protocol_version"] == "1.0"


def test_api_health_is_the_health_endpoint(dirs, served):
    import urllib.request
    worker = served("run", metrics=True)
    api = call(worker.url, "GET", "/api/v1/health")
    with urllib.request.urlopen(worker.metrics_url + "/health", timeout=10) as resp:
        plain = json.loads(resp.read())
        assert resp.status == api.status == 200
    assert set(api.json) == set(plain) and api.json["status"] == plain["status"] == "healthy"
    assert api.json["worker_id"] == plain["worker_id"] and api.json["checks"].keys() == plain["checks"].keys()


def test_unknown_route_404_and_wrong_method_405(dirs, served):
    api = served("api")
    assert call(api.url, "GET", "/api/v2/jobs").status == 404
    reply = call(api.url, "PUT", f"{JOBS}/job-rows-00011")
    assert reply.status == 405 and reply.headers["allow"] == "GET, DELETE, HEAD"
    reply = call(api.url, "HEAD", JOBS)  # POST and GET: HEAD too
    assert reply.status == 200 and reply.body == b""
    reply = call(api.url, "PATCH", JOBS)
    assert reply.status == 405 and reply.headers["allow"] == "GET, POST, HEAD"


def test_head_answers_a_gets_headers_without_its_body(dirs, served):
    """Load balancers and `curl -I` ask with HEAD: the same status, type and length as GET."""
    api = served("api")
    assert call(api.url, "POST", JOBS, doc=make_job("head-job-0001")).status == 202
    for path in (f"{JOBS}/head-job-0001", f"{JOBS}/head-job-0404", "/api/v1/capabilities", "/api/v1/health"):
        get, head = call(api.url, "GET", path), call(api.url, "HEAD", path)
        assert head.status == get.status, path
        assert head.body == b"", path
        assert head.headers["content-length"] == str(len(get.body)), path
        assert head.headers["content-type"] == "application/json", path
    out = subprocess.run([require_tool("curl"), "-sS", "-I", f"{api.url}/api/v1/health"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("HTTP/1.1 200"), out.stdout + out.stderr


# -- GET /api/v1/jobs/ID/progress ------------------------------------------------------------

@pytest.mark.engine
def test_progress_events_of_a_real_convert_job(dirs, served, tmp_path):

    from conftest import require_tool
    qemu_img = require_tool("qemu-img")
    image = tmp_path / "small.raw"
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(image), "16M"], check=True, timeout=60)
    worker = served("run")
    doc = make_job("job-progress-01", operation="guestkit.convert",
                   data={"image": {"path": str(image), "format": "raw"}, "target_format": "qcow2",
                         "output": {"destination": str(tmp_path / "small.qcow2")}})
    assert call(worker.url, "POST", JOBS, doc=doc).status == 202
    result = call(worker.url, "GET", f"{JOBS}/job-progress-01/result?wait=60", timeout=90)
    assert result.status == 200 and result.json["data"]["status"] == "completed", result
    every = call(worker.url, "GET", f"{JOBS}/job-progress-01/progress").json["data"]
    phases = [e["phase"] for e in every["events"]]
    assert phases[0] == "validation" and phases[-1] == "export" and "convert" in phases
    assert every["after"] == 0 and every["next"] == len(phases)
    with open(os.path.join(dirs.results, "job-progress-01-progress.jsonl")) as fh:
        assert every["events"] == [json.loads(line) for line in fh], "the stored events, unchanged"
    tail = call(worker.url, "GET", f"{JOBS}/job-progress-01/progress?after=2").json["data"]
    assert tail["events"] == every["events"][2:] and tail["next"] == len(phases)
    assert call(worker.url, "GET", f"{JOBS}/job-progress-01/progress?after=x").status == 400


@pytest.mark.parametrize("transport", ["files", "redis"])
def test_progress_after_out_of_range_is_400_naming_it(dirs, served, request, pool, transport):
    """``?after=`` past what a store's index holds (Redis: LRANGE's signed 64-bit start; the
    files: the same bound, so both answer alike), negative or not a whole number: 400 naming
    ``after``, never a 500; the largest accepted value answers no events."""
    from apikit import scrape_values
    where = ()
    if transport == "redis":
        from redisfixture import require_redis_py
        require_redis_py()
        where = ("--transport", "redis", "--redis-url", request.getfixturevalue("redis_url"), "--pool", pool)
    api = served("api", *where, metrics=True)
    assert call(api.url, "POST", JOBS, doc=make_job("job-after-00001")).status == 202
    path = f"{JOBS}/job-after-00001/progress"
    for bad in ("99999999999999999999999", "9223372036854775808", "-1", "abc", "1.5"):
        reply = call(api.url, "GET", f"{path}?after={bad}")
        assert reply.status == 400 and reply.json["error"] == "INVALID_PARAMETER", (bad, reply)
        assert (reply.json["details"]["field"] == "after"
                and reply.json["message"].startswith("after: ")), reply
    top = call(api.url, "GET", f"{path}?after=9223372036854775807")
    assert top.status == 200 and top.json["data"]["events"] == [], top
    assert call(api.url, "GET", f"{path}?after=0").json["data"] == {"job_id": "job-after-00001", "after": 0,
                                                                   "events": [], "next": 0}
    codes = [k for k in scrape_values(api.metrics_url) if k.startswith("guestkit_api_requests_total")]
    assert not [k for k in codes if 'code="5' in k], codes


def test_job_store_unavailable_is_503_with_retry_after_then_recovers(dirs, served):
    api = served("api")
    aside = dirs.jobs + ".aside"
    os.rename(dirs.jobs, aside)
    with open(dirs.jobs, "w") as fh:  # the jobs "directory" is now a file: every write fails
        fh.write("not a directory\n")
    try:
        reply = call(api.url, "POST", JOBS, doc=make_job("job-store-00001"))
        assert reply.status == 503 and reply.headers["retry-after"] == "5"
        assert reply.json["error"] == "TRANSPORT_UNAVAILABLE" and dirs.jobs not in reply.body.decode()
    finally:
        os.remove(dirs.jobs)
        os.rename(aside, dirs.jobs)
    assert call(api.url, "POST", JOBS, doc=make_job("job-store-00001")).status == 202
    assert call(api.url, "GET", "/api/v1/health").status == 200


def test_api_alone_serves_metrics_and_health_of_its_transport(dirs, served):
    from apikit import scrape_values
    gateway = served("api", "--worker-id", "gw-1", metrics=True)
    assert call(gateway.url, "GET", f"{JOBS}/no-such-job-9").status == 404
    health = call(gateway.url, "GET", "/api/v1/health")
    assert health.status == 200 and health.json["role"] == "api" and health.json["worker_id"] == "gw-1"
    values = scrape_values(gateway.metrics_url)
    assert values['guestkit_api_requests_total{code="404",method="GET",route="/api/v1/jobs/{id}"}'] == 1
    assert values['guestkit_api_request_duration_seconds_count{route="/api/v1/jobs/{id}"}'] == 1
    assert values['guestkit_api_request_duration_seconds_count{route="/api/v1/health"}'] == 1
    assert "guestkit_worker_jobs_total" not in "".join(values), "no job threads, no job metrics"


def test_racing_posts_of_one_job_make_one_job(dirs, served):
    from concurrent.futures import ThreadPoolExecutor
    api = served("api")
    doc = make_job("job-race-00001")
    others = [dict(doc, created_at=f"2026-11-0{d}T00:00:00Z") for d in range(2, 6)]
    with ThreadPoolExecutor(24) as pool:
        same = list(pool.map(lambda _: call(api.url, "POST", JOBS, doc=doc).status, range(20)))
        different = list(pool.map(lambda d: call(api.url, "POST", JOBS, doc=d).status, others))
    assert sorted(same).count(202) == 1 and same.count(200) == 19
    assert different == [409] * 4
    assert job_files(dirs) == ["job-race-00001.json"]


# -- what is stored is what was accepted -----------------------------------------------------

def _nested(depth):
    """A document of about 1.8 KB whose payload.data nests ``depth`` arrays deep."""
    return {"deep": json.loads("[" * depth + "1" + "]" * depth)}


@pytest.mark.parametrize("job_id, data, size", [
    ("job-size-wide01", {"items": [[1]] * 60000}, (230_000, 250_000)),  # indent=2 made it 1.98 MB
    ("job-size-deep01", _nested(900), (1_500, 2_500)),                  # indent=2 made it 1.6 MB
], ids=["wide", "deep"])
def test_an_accepted_document_is_stored_as_accepted_and_completes(dirs, served, job_id, data, size):
    """A document under --max-job-size (default 1 MiB) answered 202 is queued with the very
    bytes that were posted: it runs and its result is found by id."""
    worker = served("run")
    body = json.dumps(make_job(job_id, data=data), separators=(",", ":")).encode()
    assert size[0] < len(body) < size[1]
    reply = call(worker.url, "POST", JOBS, body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 202, reply
    done = call(worker.url, "GET", f"{JOBS}/{job_id}/result?wait=60", timeout=90)
    assert done.status == 200, done
    assert done.json["data"]["status"] == "completed" and done.json["data"]["data"] == data
    assert call(worker.url, "GET", f"{JOBS}/{job_id}").json["data"]["status"] == "completed"
    assert dirs.listing("failed") == []
    with open(os.path.join(dirs.jobs, "done", f"{job_id}.json"), "rb") as fh:
        assert fh.read() == body, "the job file holds the posted bytes"


def test_a_document_of_exactly_the_size_limit_is_accepted_and_completes(dirs, served):
    """Pretty-printed input at --max-job-size bytes, to the byte: 202, and it runs (its stored
    form is those bytes; one byte more is 413 before anything is stored)."""
    limit = 50_000
    worker = served("run", "--max-job-size", str(limit))
    doc = make_job("job-size-edge01", data={"items": [[1]] * 1500, "pad": ""})
    body = json.dumps(doc, indent=1).encode()
    doc["payload"]["data"]["pad"] = "x" * (limit - len(body))
    body = json.dumps(doc, indent=1).encode()
    assert len(body) == limit
    over = body.replace(b'"pad": "', b'"pad": "y', 1)
    reply = call(worker.url, "POST", JOBS, body=over, headers={"Content-Type": "application/json"})
    assert reply.status == 413 and reply.json["details"]["limit"] == limit
    reply = call(worker.url, "POST", JOBS, body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 202, reply
    done = call(worker.url, "GET", f"{JOBS}/job-size-edge01/result?wait=60", timeout=90)
    assert done.status == 200 and done.json["data"]["status"] == "completed", done
