"""The REST API over every transport of the contract suite (files, Redis Streams): the same
rows, the same answers, with an in-process worker on the same transport running the jobs."""

import threading

import pytest
from apikit import call
from conftest import allowed_roots, make_job, wait_for
from prometheus_client import CollectorRegistry

from guestkit_worker.api.service import ApiOptions, start_api
from guestkit_worker.handlers import default_registry
from guestkit_worker.runtime.config import WorkerConfig
from guestkit_worker.runtime.worker import Worker

pytestmark = pytest.mark.integration

JOBS = "/api/v1/jobs"


@pytest.fixture
def front_door(transport_factory, tmp_path):
    """(API url, start_worker()): the API over one transport of the factory; start_worker()
    runs an in-process worker on another transport of the same factory until the test ends."""
    api_side = transport_factory.make("api-front")
    api_side.open()
    registry = default_registry(load_plugins=False)
    registry.configure_paths(allowed_roots(), api_side.protected_paths)
    server = start_api(ApiOptions(addr="127.0.0.1:0"), transport=api_side, registry=registry,
                       allow_paths=allowed_roots(), health=lambda: (True, {"status": "healthy"}),
                       worker_id="api-front", pool="default", max_concurrent=None, max_job_size=1 << 20,
                       metrics_registry=CollectorRegistry())
    workers = []

    def start_worker():
        cfg = WorkerConfig(work_dir=str(tmp_path / "work"), worker_id="contract-runner", poll_interval=0.1,
                           allow_paths=allowed_roots(), durable=False, metrics_enabled=False)
        worker = Worker(cfg, transport=transport_factory.make("contract-runner"),
                        registry=CollectorRegistry(), handlers=default_registry(load_plugins=False))
        worker.open()
        thread = threading.Thread(target=worker.run, name="contract-runner", daemon=True)
        thread.start()
        workers.append((worker, thread))

    yield server.url, start_worker
    server.shutdown()
    for worker, thread in workers:
        worker.request_stop()
        thread.join(timeout=30)


def test_api_rows_over_every_transport(front_door):
    url, start_worker = front_door
    doc = make_job("job-door-00001")
    first = call(url, "POST", JOBS, doc=doc)
    assert first.status == 202 and first.headers["location"] == f"{JOBS}/job-door-00001"
    assert call(url, "POST", JOBS, doc=doc).status == 200
    assert call(url, "POST", JOBS, doc=dict(doc, created_at="2026-11-02T00:00:00Z")).status == 409
    status = call(url, "GET", f"{JOBS}/job-door-00001").json["data"]
    assert status["status"] == "pending" and status["operation"] == "system.echo"
    assert call(url, "GET", f"{JOBS}/job-door-00001/result").status == 202
    assert call(url, "GET", f"{JOBS}/no-such-job-1").status == 404
    call(url, "POST", JOBS, doc=make_job("job-door-00002"))
    cancelled = call(url, "DELETE", f"{JOBS}/job-door-00002")
    assert cancelled.status == 200 and cancelled.json["data"]["status"] == "cancelled"
    assert call(url, "GET", f"{JOBS}/job-door-00002/result").json["data"]["status"] == "cancelled"
    assert call(url, "DELETE", f"{JOBS}/job-door-00002").status == 409
    listed = {j["job_id"]: j["status"] for j in call(url, "GET", JOBS).json["data"]["jobs"]}
    assert listed == {"job-door-00001": "pending", "job-door-00002": "cancelled"}

    start_worker()
    done = call(url, "GET", f"{JOBS}/job-door-00001/result?wait=30", timeout=60)
    assert done.status == 200 and done.json["data"]["status"] == "completed"
    assert done.json["data"]["worker_id"] == "contract-runner"
    wait_for(lambda: call(url, "GET", f"{JOBS}/job-door-00001").json["data"]["status"] == "completed",
             timeout=10, what="the status to follow the result")
    assert call(url, "POST", JOBS, doc=doc).json["data"]["status"] == "completed", "a retry after the end"
    assert call(url, "GET", f"{JOBS}?status=completed").json["data"]["jobs"][0]["job_id"] == "job-door-00001"
