"""The README's and the Grafana dashboard's PromQL, evaluated by a real Prometheus that scrapes a
real daemon and node_exporter serving a real one-shot textfile, over scripted traffic: each
query must give the value the traffic implies, and the README and the dashboard must agree."""

import json
import os
import re
import urllib.parse

import pytest
from conftest import ROOT, cli, make_job, require_tool, start_worker, wait_for, write_job
from metricskit import get, start_and_find_port, stop, worker_url
from test_contrib import concrete, dashboard, dashboard_targets

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ENDED = ("completed", "failed", "timeout", "cancelled")


def readme_queries():
    """{label: expr} of the README's metrics table ('label: `expr`' in the last column)."""
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    out = {}
    for m in re.finditer(r"^\| `guestkit_[a-z_]+` \|[^\n]*\| ([^|`\n]+): `([^`]+)` \|$", text, re.M):
        out[m.group(1).strip()] = m.group(2)
    return out


def panel_query(title, index=0, rate="5m"):
    targets = [t for p, t in dashboard_targets(dashboard()) if p.get("title") == title]
    assert targets, title
    return concrete(targets[index]["expr"], worker_id=".*").replace("[10m]", f"[{rate}]")


class Prom:
    def __init__(self, port):
        self.api = f"http://127.0.0.1:{port}/api/v1/query?query="

    def query(self, expr):
        """{labels as JSON: value} of an instant query (raises on a PromQL error)."""
        status, _, body = get(self.api + urllib.parse.quote(expr))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", (expr, body[:500])
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in data["data"]["result"]}

    def scalar(self, expr):
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return next(iter(result.values()))


@pytest.fixture
def stack(tmp_path, dirs):
    """A daemon (max 3 at once) and a one-shot host's textfile, both scraped every second."""
    prometheus = require_tool("prometheus")
    exporter = require_tool("prometheus-node-exporter")
    procs = []
    try:
        # the one-shot host: one completed and three failed jobs, seen through node_exporter
        textdir = tmp_path / "textfile"
        textdir.mkdir()
        once = tmp_path / "once"
        os.makedirs(once / "jobs")
        write_job(str(once / "jobs"), make_job("oneshot-ok-001"))
        for i in range(3):
            write_job(str(once / "jobs"), make_job(f"oneshot-bad-{i:03d}", "test.raise"))
        cli("--once", "--worker-id", "oneshot-n1", "--jobs-dir", str(once / "jobs"), "--results-dir",
            str(once / "results"), "--work-dir", str(once / "work"), "--textfile-dir", str(textdir), check=1)
        node, node_port = start_and_find_port([exporter, "--web.listen-address=127.0.0.1:0",
                                               "--collector.disable-defaults", "--collector.textfile",
                                               f"--collector.textfile.directory={textdir}"], "node_exporter")
        procs.append(node)
        daemon = start_worker(dirs, "--metrics-addr", "127.0.0.1:0", "--worker-id", "promql-w1",
                              "--max-concurrent", "3", "--shutdown-timeout", "1")
        procs.append(daemon)
        target = urllib.parse.urlparse(worker_url(daemon)).netloc
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
            f"  - job_name: guestkit-worker\n    static_configs:\n      - targets: ['{target}']\n"
            f"  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{node_port}']\n")
        prom, port = start_and_find_port([prometheus, f"--config.file={config}",
                                          f"--storage.tsdb.path={tmp_path / 'data'}",
                                          "--web.listen-address=127.0.0.1:0", "--log.level=warn"],
                                         "prometheus")
        procs.append(prom)
        yield Prom(port), dirs
    finally:
        for p in reversed(procs):
            stop(p)


def test_readme_and_dashboard_queries_tell_the_truth(stack):
    prom, dirs = stack
    # both targets scraped, and the daemon seen idle before any job, so rate() sees every job
    wait_for(lambda: len(prom.query("up == 1")) == 2 or None, timeout=90, what="both targets up")
    scraped_twice = 'count_over_time(guestkit_worker_active_jobs{job="guestkit-worker"}[1m]) >= 2'
    wait_for(lambda: prom.query(scraped_twice) or None, timeout=30, what="two scrapes of the idle daemon")
    # before any success: no last_success series at all (not 0, i.e. not "57 years ago")
    assert prom.query('guestkit_worker_last_success_timestamp_seconds{job="guestkit-worker"}') == {}

    # scripted traffic: 6 completed, 2 failed, 3 rejected echo-like jobs, one job still running
    for i in range(6):
        write_job(dirs.jobs, make_job(f"promql-ok-{i:03d}"))
    for i in range(2):
        write_job(dirs.jobs, make_job(f"promql-bad-{i:03d}", "test.raise"))
    for i in range(3):
        write_job(dirs.jobs, make_job(f"promql-rej-{i:03d}", execution={"priority": 42}))
    write_job(dirs.jobs, make_job("zz-promql-long", "test.sleep", {"seconds": 120}))
    wait_for(lambda: len(dirs.all_results()) == 11 and dirs.running(), timeout=60,
             what="11 results, 1 running")
    wait_for(lambda: prom.query('sum(guestkit_worker_jobs_total{job="guestkit-worker"}) == 11') or None,
             timeout=30, what="Prometheus has all 11 ends")
    wait_for(lambda: prom.query('guestkit_worker_oldest_running_job_seconds{job="guestkit-worker"} > 3')
             or None, timeout=30, what="the running job's age")

    readme = readme_queries()
    values = {}

    # success rate: completed / jobs that ran (rejected excluded, one-shot textfile excluded)
    values["readme success rate"] = prom.scalar(readme["success rate"])
    values["dashboard Success rate"] = prom.scalar(panel_query("Success rate"))
    assert values["readme success rate"] == pytest.approx(6 / 8) == values["dashboard Success rate"]
    # what the README's old query said over the same data (rejected and textfile series counted)
    values["old readme success rate"] = prom.scalar(
        'sum(rate(guestkit_worker_jobs_total{status="completed"}[5m]))'
        ' / sum(rate(guestkit_worker_jobs_total[5m]))')
    assert values["old readme success rate"] != pytest.approx(6 / 8)

    # p95 duration of echo jobs that take milliseconds: inside a sub-second bucket (the spec's
    # buckets alone gave 0.95 s for them)
    p95 = prom.query(readme["p95 duration"])
    values["readme p95 duration (system.echo)"] = p95['{"operation": "system.echo"}']
    dash = prom.query(panel_query("Job duration p95 by operation"))
    values["dashboard p95 duration (system.echo)"] = dash['{"operation": "system.echo"}']
    assert values["readme p95 duration (system.echo)"] < 0.5
    assert values["dashboard p95 duration (system.echo)"] == pytest.approx(
        values["readme p95 duration (system.echo)"])

    # capacity left: the daemon's 3 slots minus its 1 running job; the one-shot host's slots are not capacity
    values["readme capacity left"] = prom.scalar(readme["capacity left"])
    assert values["readme capacity left"] == 2
    values["dashboard Active jobs / capacity"] = prom.scalar(panel_query("Active jobs / capacity"))
    assert values["dashboard Active jobs / capacity"] == pytest.approx(1 / 3)
    values["readme saturation"] = prom.scalar(readme["saturation"])
    assert values["readme saturation"] == pytest.approx(1 / 3)

    # queue wait of jobs written while the daemon polls every 0.1 s: sub-second
    values["readme p90 wait"] = prom.scalar(readme["p90 wait"])
    assert values["readme p90 wait"] < 1.0

    # the one-shot host ran 5 minutes ago at most: "not running" is silent; the daemon has no last_run
    assert prom.query(readme["one-shot not running"]) == {}
    # a daemon that has completed jobs: time since its last success is seconds, not years
    since = prom.query(readme["time since the last completed job"])
    daemon_series = next(k for k in since if "guestkit-worker" in k)
    values["readme time since last success (daemon)"] = since[daemon_series]
    assert 0 <= values["readme time since last success (daemon)"] < 120
    # the one-shot run failed (3 of 4 jobs): its textfile has no last_success either
    assert not [k for k in since if '"node"' in k]

    # health: every check 1, the failing-checks query empty; the stuck-job query empty (age < 1 h)
    checks = prom.query('guestkit_worker_health_check{job="guestkit-worker"}')
    assert checks and set(checks.values()) == {1.0}
    assert prom.query(readme["failing checks"]) == {}
    values["oldest running job seconds"] = prom.scalar(
        'guestkit_worker_oldest_running_job_seconds{job="guestkit-worker"}')
    assert 3 < values["oldest running job seconds"] < 120
    assert prom.query(readme["stuck job"]) == {}
    values["dashboard Failing health checks"] = prom.scalar(panel_query("Failing health checks"))
    assert values["dashboard Failing health checks"] == 0
    values["dashboard Oldest running job"] = prom.scalar(panel_query("Oldest running job"))
    assert 3 < values["dashboard Oldest running job"] < 120

    # every README example parses and runs against the same data
    for expr in readme.values():
        prom.query(expr)
    print(json.dumps(values, indent=1, sort_keys=True))  # quoted in the closing note (pytest -s)
