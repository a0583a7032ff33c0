"""The REST API under load and across restarts, against real processes: 200 idle and 50
waiting connections while /metrics answers and jobs still run; the cap on waits; a worker
killed between submit and result."""

import os
import signal
import socket

import pytest
from apikit import call, scrape_values, served  # noqa: F401 (fixture)
from conftest import make_job, wait_for

pytestmark = pytest.mark.integration

JOBS = "/api/v1/jobs"


def _threads(pid):
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line for line in fh if line.startswith("Threads:")).split()[1])


def _open(url, request=None):
    host, _, port = url.partition("://")[2].rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    if request:
        sock.sendall(request)
    return sock


@pytest.mark.slow
def test_200_idle_and_50_waiting_connections_leave_metrics_and_jobs_alone(dirs, served):
    worker = served("run", "--max-concurrent", "2", "--api-max-connections", "300", "--api-max-waits", "50",
                    metrics=True)
    parked = make_job("job-load-parked", routing={"worker_pool": "elsewhere"})  # never runs here
    assert call(worker.url, "POST", JOBS, doc=parked).status == 202
    baseline = _threads(worker.proc.pid)
    idle = [_open(worker.url) for _ in range(200)]
    wait_request = b"GET /api/v1/jobs/job-load-parked/result?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n"
    waiting = [_open(worker.url, wait_request) for _ in range(50)]
    try:
        wait_for(lambda: scrape_values(worker.metrics_url).get("guestkit_api_waiting_requests") == 50,
                 timeout=30, what="50 requests waiting for a result")
        # one wait more is refused at once, with Retry-After
        extra = call(worker.url, "GET", f"{JOBS}/job-load-parked/result?wait=60", timeout=10)
        assert extra.status == 503 and extra.headers["retry-after"] == "1"
        assert extra.json["error"] == "TOO_MANY_WAITS"
        # /metrics answers within its timeout and jobs still run, submitted through the same API
        for i in range(3):
            values = scrape_values(worker.metrics_url, timeout=5)
            assert values["guestkit_api_waiting_requests"] == 50
            job_id = f"job-load-run-{i}"
            assert call(worker.url, "POST", JOBS, doc=make_job(job_id), timeout=10).status == 202
            stored = os.path.join(dirs.results, f"{job_id}-result.json")
            wait_for(lambda stored=stored: os.path.exists(stored), timeout=30, what=f"{job_id} to run")
            assert dirs.result(job_id)["status"] == "completed"
        # idle connections cost no thread: about one per waiting request
        assert _threads(worker.proc.pid) - baseline <= 50 + 8
    finally:
        for sock in idle + waiting:
            sock.close()
    values = scrape_values(worker.metrics_url)
    refused_wait = 'guestkit_api_requests_total{code="503",method="GET",route="/api/v1/jobs/{id}/result"}'
    assert values[refused_wait] == 1
    assert values['guestkit_api_requests_total{code="202",method="POST",route="/api/v1/jobs"}'] == 4
    assert not any("job-load" in name for name in values), "no job id in any label"


def test_wait_returns_as_soon_as_the_job_finishes(dirs, served):
    worker = served("run")
    doc = make_job("job-load-sleep1", operation="test.sleep", data={"seconds": 1})
    assert call(worker.url, "POST", JOBS, doc=doc).status == 202
    reply = call(worker.url, "GET", f"{JOBS}/job-load-sleep1/result?wait=60", timeout=30)
    assert reply.status == 200 and reply.json["data"]["status"] == "completed"
    assert reply.json["data"] == dirs.result("job-load-sleep1")


def test_worker_killed_between_submit_and_result_loses_nothing(dirs, served):
    first = served("run", "--worker-id", "w-restart-1", "--max-concurrent", "1")
    # the SIGKILL may land while any of them runs (names sort echo1, echo2, sleep; a slow POST
    # leaves the sleep done): each may take a second attempt, so none can end WORKER_CRASHED
    twice = {"max_attempts": 2}
    docs = [make_job("job-restart-sleep", operation="test.sleep", data={"seconds": 2}, execution=twice),
            make_job("job-restart-echo1", execution=twice), make_job("job-restart-echo2", execution=twice)]
    for doc in docs:
        assert call(first.url, "POST", JOBS, doc=doc).status == 202
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    # the API alone answers from the directories meanwhile
    gateway = served("api")
    assert {call(gateway.url, "GET", f"{JOBS}/{d['job_id']}").status for d in docs} == {200}
    second = served("run", "--worker-id", "w-restart-2")
    for doc in docs:
        reply = call(second.url, "GET", f"{JOBS}/{doc['job_id']}/result?wait=60", timeout=90)
        assert reply.status == 200 and reply.json["data"]["status"] == "completed", reply
        assert reply.json["data"]["execution_summary"]["attempt"] in (1, 2), reply
    assert call(second.url, "POST", JOBS, doc=docs[1]).status == 200, "a retried POST after the restart"
    assert sorted(os.listdir(os.path.join(dirs.jobs, "done"))) == sorted(f"{d['job_id']}.json" for d in docs)


def test_job_submitted_to_the_api_alone_runs_when_a_worker_starts(dirs, served):
    gateway = served("api")
    assert call(gateway.url, "POST", JOBS, doc=make_job("job-restart-later")).status == 202
    gateway.stop()
    worker = served("run")
    reply = call(worker.url, "GET", f"{JOBS}/job-restart-later/result?wait=30", timeout=60)
    assert reply.status == 200 and reply.json["data"]["status"] == "completed"
