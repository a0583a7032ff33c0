"""The producer library (guestkit_worker.client) against live APIs: the README's five-line
producer run as it is written, every call's answer and every typed error, and the library's
promise to import nothing but the standard library."""

import json
import os
import re
import subprocess
import sys

import pytest
from apikit import Pki, call, served, write_tokens  # noqa: F401 (fixture)
from conftest import ROOT, make_job, worker_env

from guestkit_worker import client as gkc

pytestmark = pytest.mark.integration

README = os.path.join(ROOT, "README.md")


def readme_producer():
    """The README's python block that follows "a five-line producer"."""
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    found = re.search(r"a five-line producer:\n\n```python\n(.*?)```", text, re.S)
    assert found, "README: the five-line producer is gone"
    return found.group(1)


def test_readme_producer_runs_as_written(dirs, served):
    code = readme_producer()
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    worker = served("run")
    argv = [sys.executable, "-c", code.replace("http://127.0.0.1:8080", worker.url)]
    for _ in range(2):  # the second run re-submits the same document: no second job, same output
        proc = subprocess.run(argv, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "example-hello-0001 completed\n"
    assert len(os.listdir(os.path.join(dirs.jobs, "done"))) == 1


def test_every_call_against_a_gateway_whose_jobs_wait(dirs, served, tmp_path):
    """``guestkit-worker api`` (no job threads): jobs stay pending, so each answer is certain."""
    api = served("api", "--api-token-file", write_tokens(tmp_path, "client-token-0001"))
    client = gkc.Client(api.url, token="client-token-0001", timeout=20)
    first = client.submit(make_job("client-calls-0001"))
    assert first == gkc.Submission("client-calls-0001", "pending", True)
    assert client.submit(json.dumps(make_job("client-calls-0001"))) == \
        gkc.Submission("client-calls-0001", "pending", False)
    assert client.status("client-calls-0001")["status"] == "pending"
    with pytest.raises(gkc.NotFinished) as waiting:
        client.result("client-calls-0001", wait=0.3)
    assert waiting.value.job_status == "pending"
    assert str(waiting.value) == "client-calls-0001: not finished (pending)"
    for n in range(2, 6):
        client.submit(make_job(f"client-calls-000{n}"))
    page = client.list(limit=2)
    assert len(page["jobs"]) == 2 and page["next_page_token"]
    assert sorted(job["job_id"] for job in client.jobs(status="pending")) == \
        [f"client-calls-000{n}" for n in range(1, 6)]
    assert client.progress("client-calls-0001") == {"job_id": "client-calls-0001", "after": 0, "events": [],
                                                    "next": 0}
    assert {"guestkit.convert", "guestkit.inspect", "system.echo"} <= \
        {op["name"] for op in client.capabilities()["operations"]}
    assert client.cancel("client-calls-0001") == {"job_id": "client-calls-0001", "status": "cancelled"}
    assert client.result("client-calls-0001")["status"] == "cancelled"


def test_each_refusal_is_its_typed_error(dirs, served, tmp_path):
    api = served("api", "--api-token-file", write_tokens(tmp_path, "client-token-0002"))
    client = gkc.Client(api.url, token="client-token-0002", timeout=20)
    client.submit(make_job("client-errors-0001"))
    client.cancel("client-errors-0001")
    cases = [
        (lambda: client.status("no-such-job-0001"), gkc.NotFound, 404, "NOT_FOUND", "job_id"),
        (lambda: client.submit(make_job("client-errors-0001", data={"other": 1})), gkc.Conflict, 409,
         "JOB_ID_CONFLICT", "job_id"),
        (lambda: client.cancel("client-errors-0001"), gkc.Conflict, 409, "JOB_FINISHED", None),
        (lambda: client.submit(dict(make_job("client-errors-0002"), execution={"priority": 12})), gkc.Invalid,
         422, "INVALID_JOB", "execution.priority"),
        (lambda: client.submit(b"{not json"), gkc.Invalid, 400, "INVALID_JSON", "body"),
        (lambda: client.list(limit=0), gkc.Invalid, 400, "INVALID_PARAMETER", "limit"),
        (lambda: gkc.Client(api.url, token="wrong").status("client-errors-0001"), gkc.Unauthorized, 401,
         "UNAUTHORIZED", None),
    ]
    for run, kind, status, code, field in cases:
        with pytest.raises(kind) as caught:
            run()
        err = caught.value
        assert isinstance(err, gkc.ApiError) and isinstance(err, gkc.ClientError)
        assert (err.status, err.code, err.field) == (status, code, field), err
        assert str(err) == f"{code}: {err.message}" and err.body["success"] is False


def test_wrong_places_are_configuration_errors_and_no_answer_is_unreachable(dirs, served):
    api = served("api")
    with pytest.raises(gkc.NotAnApi) as wrong:
        gkc.Client(api.url + "/wrong/prefix").status("client-where-0001")
    assert str(wrong.value).startswith(f"'{api.url}/wrong/prefix': not a guestkit-worker API (404 for /wrong/"
                                       "prefix/api/v1/jobs/client-where-0001); give the API's base URL")
    for url in ("ftp://host", "http://[::1", "http://h:0", "http://u:p@h:1", "http://h:1/?q"):
        with pytest.raises(gkc.BadUrl):
            gkc.Client(url)
    port = int(api.url.rsplit(":", 1)[1])
    api.stop()
    with pytest.raises(gkc.Unreachable) as gone:
        gkc.Client(f"http://127.0.0.1:{port}", timeout=5).status("client-where-0001")
    assert str(gone.value).startswith(f"http://127.0.0.1:{port}: ")


def test_https_with_a_ca_and_a_client_certificate(dirs, served, tmp_path):
    pki = Pki(tmp_path / "pki")
    api = served("api", "--api-tls-cert", pki.cert, "--api-tls-key", pki.key, "--api-client-ca", pki.ca)
    client = gkc.Client(api.url, ca=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    assert client.submit(make_job("client-tls-0001")).created
    with pytest.raises(gkc.Unreachable):
        gkc.Client(api.url, ca=pki.ca, timeout=5).status("client-tls-0001")  # no client certificate
    with pytest.raises(gkc.ClientConfigError):
        gkc.Client(api.url, ca=str(tmp_path / "missing.pem"))


def test_importing_the_library_loads_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import guestkit_worker.client; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    proc = subprocess.run([sys.executable, "-c", code], env=worker_env(), capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = proc.stdout.split()
    ours = sorted(n for n in loaded if n.startswith("guestkit_worker"))
    assert ours == ["guestkit_worker", "guestkit_worker.client"]
    outside = [n for n in loaded if n.split(".")[0] not in sys.stdlib_module_names
               and not n.startswith(("guestkit_worker", "_"))]
    assert outside == [], outside


@pytest.mark.parametrize("status, code, kind", [
    (504, "OUTCOME_UNKNOWN", gkc.OutcomeUnknown), (504, "GATEWAY_TIMEOUT", gkc.Unavailable),
    (503, "TOO_MANY_WAITS", gkc.Unavailable), (500, "INTERNAL_ERROR", gkc.Unavailable),
    (413, "PAYLOAD_TOO_LARGE", gkc.Invalid), (415, "UNSUPPORTED_MEDIA_TYPE", gkc.Invalid),
    (418, "TEAPOT", gkc.ApiError)])
def test_answers_that_a_live_api_gives_rarely_map_to_their_type(status, code, kind):
    """504 OUTCOME_UNKNOWN (a Redis that took a submission and never answered: see
    test_redis_hotcall) and the other rare answers, from their JSON bodies."""
    err = gkc.error_for(status, {"success": False, "error": code, "message": "m", "details": {"field": "f"}})
    assert type(err) is kind and (err.status, err.code, err.field) == (status, code, "f")
    assert isinstance(err, gkc.ApiError)
    if kind is gkc.Unavailable:
        assert err.busy == (code == "TOO_MANY_WAITS")
