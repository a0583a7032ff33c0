"""The Grafana dashboard's "REST API" row, evaluated by a real Prometheus scraping a worker with
its API (``run --api-addr``) and an API gateway (``guestkit-worker api``) over scripted
requests: each panel must show what the traffic implies, and select servers by worker_id."""

import json
import urllib.parse

import pytest
from apikit import call, served  # noqa: F401 (fixture)
from conftest import make_job, require_tool, wait_for
from metricskit import get, start_and_find_port, stop
from test_contrib import concrete, dashboard, dashboard_targets

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORKER, GATEWAY = "promql-api-w1", "promql-api-gw"


def panel_query(title, index=0, worker_id=".*"):
    targets = [t for p, t in dashboard_targets(dashboard()) if p.get("title") == title]
    assert targets, title
    return concrete(targets[index]["expr"], worker_id=worker_id)


def query(port, expr):
    """{labels as JSON: value} of an instant query (raises on a PromQL error)."""
    status, _, body = get(f"http://127.0.0.1:{port}/api/v1/query?query=" + urllib.parse.quote(expr))
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", (expr, body[:500])
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in data["data"]["result"]}


def traffic(url, prefix, accepted, not_json, unknown):
    """POST `accepted` valid jobs (202), `not_json` bodies that are not JSON (400), and GET
    `unknown` job ids (404); every answer checked."""
    for i in range(accepted):
        assert call(url, "POST", "/api/v1/jobs", doc=make_job(f"{prefix}-{i:04d}")).status == 202
    for _ in range(not_json):
        assert call(url, "POST", "/api/v1/jobs", body=b"{not json",
                    headers={"Content-Type": "application/json"}).status == 400
    for i in range(unknown):
        assert call(url, "GET", f"/api/v1/jobs/{prefix}-missing-{i:04d}").status == 404
    return accepted + not_json + unknown


def test_dashboard_api_row_tells_the_truth(tmp_path, dirs, served):  # noqa: F811
    prometheus = require_tool("prometheus")
    # the worker runs the accepted echo jobs meanwhile: the API row counts requests, not jobs
    worker = served("run", "--worker-id", WORKER, metrics=True)
    gateway = served("api", "--worker-id", GATEWAY, metrics=True)
    # warm-up: each series the traffic touches exists before Prometheus's first scrape, so the
    # increases seen later are exactly the scripted requests
    expected = {WORKER: traffic(worker.url, "warm-w", 1, 1, 1),
                GATEWAY: traffic(gateway.url, "warm-g", 1, 1, 1)}
    targets = {WORKER: urllib.parse.urlparse(worker.metrics_url).netloc,
               GATEWAY: urllib.parse.urlparse(gateway.metrics_url).netloc}
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
        "  - job_name: guestkit-worker\n    static_configs:\n"
        f"      - targets: ['{targets[WORKER]}', '{targets[GATEWAY]}']\n")
    prom, port = start_and_find_port([prometheus, f"--config.file={config}",
                                      f"--storage.tsdb.path={tmp_path / 'data'}",
                                      "--web.listen-address=127.0.0.1:0", "--log.level=warn"], "prometheus")
    try:
        def totals():
            got = query(port, "sum by (instance) (guestkit_api_requests_total)")
            return {json.loads(k)["instance"]: v for k, v in got.items()}

        def seen(want):
            return lambda: totals() == {targets[w]: float(n) for w, n in want.items()}
        wait_for(seen(expected), timeout=60, what="Prometheus to scrape both API servers")
        wait_for(lambda: query(port, "count_over_time(guestkit_api_requests_total[1m])")
                 and min(query(port, "count_over_time(guestkit_api_requests_total[1m])").values()) >= 3,
                 timeout=30, what="three scrapes of the warm-up")
        expected[WORKER] += traffic(worker.url, "api-w", 6, 2, 4)
        expected[GATEWAY] += traffic(gateway.url, "api-g", 3, 0, 1)
        wait_for(seen(expected), timeout=60, what="Prometheus to scrape the traffic")
        wait_for(lambda: min(query(port, "count_over_time(guestkit_api_requests_total[1m])").values()) >= 6,
                 timeout=30, what="more scrapes after the traffic")

        # requests by route and code: route templates, never a job id; 202 : 404 = 9 : 5
        by = {(json.loads(k)["route"], json.loads(k)["method"], json.loads(k)["code"]): v
              for k, v in query(port, panel_query("API requests by route and code")).items()}
        assert set(by) == {("/api/v1/jobs", "POST", "202"), ("/api/v1/jobs", "POST", "400"),
                           ("/api/v1/jobs/{id}", "GET", "404")}, by
        assert by[("/api/v1/jobs", "POST", "202")] / by[("/api/v1/jobs/{id}", "GET", "404")] == \
            pytest.approx(9 / 5, rel=0.1)
        assert by[("/api/v1/jobs", "POST", "400")] / by[("/api/v1/jobs/{id}", "GET", "404")] == \
            pytest.approx(2 / 5, rel=0.1)

        # error shares: no 5xx answered (no series: the panel shows nothing), 4xx = 7 of 16
        assert query(port, panel_query("API error ratio", 0)) == {}
        (share,) = query(port, panel_query("API error ratio", 1)).values()
        assert share == pytest.approx(7 / 16, rel=0.1)
        # the gateway alone, selected by its worker_id: 1 of 4
        (share,) = query(port, panel_query("API error ratio", 1, worker_id=GATEWAY)).values()
        assert share == pytest.approx(1 / 4, rel=0.1)

        # latency p95 by route: every route answered, each within the first buckets
        by_route = query(port, panel_query("API latency p95 by route"))
        p95 = {json.loads(k)["route"]: v for k, v in by_route.items()}
        assert set(p95) == {"/api/v1/jobs", "/api/v1/jobs/{id}"}, p95
        assert all(0 < v <= 1.0 for v in p95.values()), p95

        # nobody waits, nothing was refused: one series per selected server, each 0
        waiting = query(port, panel_query("API waiting requests and refused connections", 0))
        assert {json.loads(k)["worker_id"]: v for k, v in waiting.items()} == {WORKER: 0.0, GATEWAY: 0.0}
        refused = query(port, panel_query("API waiting requests and refused connections", 1))
        assert {json.loads(k)["worker_id"]: v for k, v in refused.items()} == {WORKER: 0.0, GATEWAY: 0.0}
    finally:
        stop(prom)
