"""schemathesis against a live worker's REST API, on the file transport and on Redis: every
answer must be one the OpenAPI document (docs/openapi.json) describes, with its status, media
type, body schema and headers; tokens must be required; other methods must get 405.

The run is deterministic (a fixed seed and example count) and bounded in time: the server is a
worker (``run``), whose jobs end at once, so a generated ``result?wait=`` never waits long (a
request may take 75 s: a wait is honoured up to 60).  Its summary line is printed, so
``pytest -s`` shows it.  Also here: the answers it led to fixing."""

import re
import subprocess
import sys

import pytest
from apikit import call, served, write_tokens  # noqa: F401 (fixture)
from conftest import make_job, require, worker_env
from redisfixture import require_redis_py

pytestmark = pytest.mark.integration

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "ignored_auth",
          "unsupported_method")
TOKEN = "contract-token-0001"
SEED = 24
EXAMPLES = 20
#: what a whole schemathesis run may take on a loaded 2-core machine
RUN_TIMEOUT = 240


def schemathesis_cli():
    """The argv prefix that runs the schemathesis CLI of this Python."""
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        schemathesis = None
    require(schemathesis is not None, "schemathesis is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", "schemathesis.cli"]


def run_schemathesis(api_url, cwd):
    """Run every phase against ``api_url``; (exit status, its output, the summary line)."""
    argv = [*schemathesis_cli(), "run", f"{api_url}/api/v1/openapi.json",
            "-H", f"Authorization: Bearer {TOKEN}", "--checks", ",".join(CHECKS),
            "--seed", str(SEED), "--max-examples", str(EXAMPLES),
            "--workers", "1", "--generation-database", "none", "--request-timeout", "75",
            "--no-color", "--warnings", "off"]
    proc = subprocess.run(argv, cwd=str(cwd), env=dict(worker_env(), COLUMNS="120"), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r" in [\d.]+s\b", line)), "")
    cases = next((line for line in lines if re.match(r"\d+ generated, ", line)), "")
    return proc.returncode, proc.stdout + proc.stderr, f"{cases}; {summary}"


def assert_conforms(api_url, cwd):
    status, output, summary = run_schemathesis(api_url, cwd)
    print(f"schemathesis (seed {SEED}, {EXAMPLES} examples): {summary}")
    assert status == 0, output[-6000:]
    assert re.match(r"\d+ generated, \d+ passed", summary) and "fail" not in summary, output[-3000:]


def test_schemathesis_finds_nothing_on_files(dirs, served, tmp_path):
    api = served("run", "--api-token-file", write_tokens(tmp_path, TOKEN))
    first = call(api.url, "POST", "/api/v1/jobs", doc=make_job("contract-file-0001"), token=TOKEN)
    assert first.status == 202
    assert_conforms(api.url, tmp_path)


def test_schemathesis_finds_nothing_on_redis(dirs, served, tmp_path, redis_server, pool):
    require_redis_py()
    api = served("run", "--transport", "redis", "--redis-url", redis_server.url, "--pool", pool,
                 "--api-token-file", write_tokens(tmp_path, TOKEN))
    first = call(api.url, "POST", "/api/v1/jobs", doc=make_job("contract-redis-0001"), token=TOKEN)
    assert first.status == 202
    assert_conforms(api.url, tmp_path)


# -- what it led to fixing ------------------------------------------------------------------

def test_escaped_slash_in_a_job_id_stays_in_the_id(dirs, served):
    """A job id is one path segment: ``%2F`` in it is not a path separator, so ``X%2Fresult``
    is the job "X/result" (no such job), never job X's result, and DELETE of it is 404."""
    api = served("run")
    assert call(api.url, "POST", "/api/v1/jobs", doc=make_job("slash-job-0001")).status == 202
    assert call(api.url, "GET", "/api/v1/jobs/slash-job-0001/result?wait=30").status == 200
    for method in ("GET", "DELETE"):
        reply = call(api.url, method, "/api/v1/jobs/slash-job-0001%2Fresult")
        assert reply.status == 404, (method, reply)
        assert reply.json["error"] == "NOT_FOUND" and reply.json["details"] == {"field": "job_id"}
        assert reply.json["message"] == "no job with id slash-job-0001/result"
    # a path's escapes are UTF-8, as a client library sends them
    assert call(api.url, "GET", "/api/v1/jobs/caf%C3%A9-0001").json["message"] == "no job with id café-0001"
    # escaped unreserved characters are the same path (RFC 3986)
    assert call(api.url, "GET", "/api/v1/jobs/slash%2Djob%2D0001").json["data"]["job_id"] == "slash-job-0001"


def _conforms(reply, path, method="get"):
    """Check an answer against the document's schema for its path, method and status."""
    from jsonschema import Draft202012Validator

    from guestkit_worker.api.openapi import document
    doc = document()
    answer = doc["paths"][path][method]["responses"][str(reply.status)]
    if "$ref" in answer:
        answer = doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = {"components": doc["components"], **answer["content"]["application/json"]["schema"]}
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(reply.json)]
    assert errors == [], (path, reply.status, errors, reply.json)


@pytest.mark.parametrize("transport", ["files", "redis"])
def test_every_final_status_answers_as_the_document_says(dirs, served, transport, request):
    """The outcomes schemathesis cannot make (a handler that raises, a timeout, a cancel while
    running, a job the worker rejects): their result and status match the document."""
    from conftest import wait_for, write_job
    where = ()
    if transport == "redis":
        require_redis_py()
        where = ("--transport", "redis", "--redis-url", request.getfixturevalue("redis_server").url,
                 "--pool", request.getfixturevalue("pool"))
    worker = served("run", *where)
    jobs = {"completed": make_job("final-completed-01"),
            "failed": make_job("final-failed-0001", operation="test.raise", data={"message": "boom"}),
            "timeout": make_job("final-timeout-001", operation="test.sleep", data={"seconds": 60},
                                execution={"timeout_seconds": 1}),
            "cancelled": make_job("final-cancel-0001", operation="test.sleep", data={"seconds": 60})}
    for doc in jobs.values():
        assert call(worker.url, "POST", "/api/v1/jobs", doc=doc).status == 202
    wait_for(lambda: call(worker.url, "GET", "/api/v1/jobs/final-cancel-0001").json["data"]["status"]
             == "running", timeout=60, what="the job to run")
    assert call(worker.url, "DELETE", "/api/v1/jobs/final-cancel-0001").status == 202
    if transport == "files":  # a job file that the API would have refused: the worker refuses it
        write_job(dirs.jobs, make_job("final-reject-0001", operation="no.such-op"))
        jobs["failed at admission"] = {"job_id": "final-reject-0001"}
    for status, doc in jobs.items():
        path = f"/api/v1/jobs/{doc['job_id']}"
        result = call(worker.url, "GET", path + "/result?wait=30", timeout=60)
        assert result.status == 200 and result.json["data"]["status"] == status.split()[0], result
        _conforms(result, "/api/v1/jobs/{id}/result")
        if status != "completed":
            assert result.json["data"]["error"]["code"], result
        job = call(worker.url, "GET", path)
        _conforms(job, "/api/v1/jobs/{id}")
        assert job.json["data"]["status"] == {"failed at admission": "rejected"}.get(status, status)
    _conforms(call(worker.url, "GET", "/api/v1/jobs"), "/api/v1/jobs")
    progress = call(worker.url, "GET", "/api/v1/jobs/final-failed-0001/progress")
    _conforms(progress, "/api/v1/jobs/{id}/progress")
    _conforms(call(worker.url, "GET", "/api/v1/health"), "/api/v1/health")
