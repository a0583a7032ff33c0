"""Metrics, /metrics + /health and the one-shot textfile, checked with exact values and with a
real Prometheus, promtool and node_exporter."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse

import pytest
from conftest import cli, make_job, require_tool, start_worker, wait_for, write_job
from faultkit import total
from metricskit import get, parse, scrape, series, start_and_find_port, stop, value, worker_url
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(240)

OPS = ("guestkit.convert", "guestkit.inspect", "system.echo")


def scripted_jobs(dirs):
    """3 completed, 1 rejected, 1 failed, 1 timeout, 1 duplicate."""
    for i in range(3):
        write_job(dirs.jobs, make_job(f"metrics-ok-{i:03d}", execution={"idempotency_key": f"k{i}"}))
    write_job(dirs.jobs, make_job("metrics-rejected", execution={"priority": 42}))
    write_job(dirs.jobs, make_job("metrics-failed01", "test.raise"))
    write_job(dirs.jobs, make_job("metrics-timeout1", "test.sleep", {"seconds": 60},
                                  execution={"timeout_seconds": 1}))


@pytest.fixture
def daemon(dirs):
    procs = []

    def start(*args):
        proc = start_worker(dirs, "--metrics-addr", "127.0.0.1:0", "--worker-id", "metrics-w1",
                            "--shutdown-timeout", "1", *args)
        procs.append(proc)
        return proc, worker_url(proc)
    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=60)


@pytest.mark.integration
def test_exact_values_after_scripted_jobs(dirs, daemon):
    scripted_jobs(dirs)
    proc, url = daemon()
    wait_for(lambda: len(dirs.all_results()) == 6, what="six results")
    write_job(dirs.jobs, make_job("metrics-dup-0001", execution={"idempotency_key": "k0"}))
    wait_for(lambda: "metrics-dup-0001" in dirs.all_results(), what="duplicate result")
    # outcomes are counted just after their job files are archived: wait for all seven
    # (the queue depth is already 0 then: see test_queue_depth_is_zero_as_soon_as_each_job_is_counted)
    s = wait_for(lambda: (lambda m: m if total(m, "guestkit_worker_jobs_total") == 7 else None)(
        parse(scrape(url))), what="seven outcomes counted")
    assert value(s, "guestkit_worker_jobs_total", operation="system.echo", status="duplicate") == 1
    echo = "system.echo"
    assert value(s, "guestkit_worker_jobs_total", operation=echo, status="completed") == 3
    assert value(s, "guestkit_worker_jobs_total", operation=echo, status="rejected") == 1
    assert value(s, "guestkit_worker_jobs_total", operation="test.raise", status="failed") == 1
    assert value(s, "guestkit_worker_jobs_total", operation="test.sleep", status="timeout") == 1
    assert value(s, "guestkit_worker_jobs_duration_seconds_count", operation=echo, status="completed") == 3
    assert value(s, "guestkit_worker_jobs_duration_seconds_sum", operation=echo, status="completed") < 3
    assert value(s, "guestkit_worker_jobs_duration_seconds_bucket", operation=echo, status="completed",
                 le="1.0") == 3
    t = value(s, "guestkit_worker_jobs_duration_seconds_sum", operation="test.sleep", status="timeout")
    assert 1.0 <= t < 15
    assert value(s, "guestkit_handler_executions_total", handler="system.echo", status="success") == 3
    assert value(s, "guestkit_handler_executions_total", handler="test.raise", status="error") == 1
    assert value(s, "guestkit_handler_executions_total", handler="test.sleep", status="timeout") == 1
    assert value(s, "guestkit_handler_duration_seconds_count", handler="system.echo", status="success") == 3
    assert value(s, "guestkit_worker_active_jobs") == 0
    assert value(s, "guestkit_worker_queue_depth") == 0
    assert value(s, "guestkit_worker_max_concurrent_jobs") == 4
    assert value(s, "guestkit_worker_info", worker_id="metrics-w1", pool="default", version="0.1.0") == 1
    assert value(s, "guestkit_worker_queue_wait_seconds_count") == 5  # handlers started: 3 ok + raise + sleep
    assert time.time() - value(s, "guestkit_worker_last_success_timestamp_seconds") < 120
    # every known label value exists from the start, at 0
    for op in OPS:
        for st in ("completed", "failed", "timeout", "cancelled", "rejected", "duplicate"):
            assert ("guestkit_worker_jobs_total", frozenset({"operation": op, "status": st}.items())) in s
    for st in ("success", "failure", "skipped"):
        assert value(s, "guestkit_checksum_verifications_total", status=st) == 0
    assert value(s, "guestkit_worker_disk_read_bytes_total") == 0
    # the default registry brings process_* and python_* along; no _created series
    assert value(s, "process_open_fds") > 0
    assert any(k[0].startswith("python_gc_") for k in s)
    assert not any(k[0].endswith("_created") for k in s)


@pytest.mark.integration
def test_queue_depth_is_zero_as_soon_as_each_job_is_counted(dirs, daemon):
    """The worker looks the queue up at most every 0.5 s while it is full, yet a job taken from
    a queue left empty leaves no stale depth behind: /metrics and /health say 0 the moment
    each of eight jobs, written one at a time, is counted."""
    proc, url = daemon()
    for i in range(8):
        write_job(dirs.jobs, make_job(f"depth-one-{i:03d}"))
        s = wait_for(lambda i=i: (lambda m: m if total(m, "guestkit_worker_jobs_total") == i + 1 else None)(
            parse(scrape(url))), what=f"job {i + 1} counted")
        assert value(s, "guestkit_worker_queue_depth") == 0, f"job {i + 1}"
        status, _, body = get(url + "/health")
        assert (status, json.loads(body)["queue_depth"]) == (200, 0)


@pytest.mark.integration
def test_promtool_check_metrics(dirs, daemon):
    promtool = require_tool("promtool")
    write_job(dirs.jobs, make_job("promtool-job-01"))
    proc, url = daemon()
    wait_for(lambda: dirs.all_results(), what="a result")
    text = scrape(url)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == ""


@pytest.mark.integration
def test_queue_depth_and_active_while_busy(dirs, daemon):
    write_job(dirs.jobs, make_job("depth-running-1", "test.sleep", {"seconds": 60}), "a.json")
    for i in range(3):
        write_job(dirs.jobs, make_job(f"depth-waiting-{i}"), f"b{i}.json")
    proc, url = daemon("--max-concurrent", "1")

    def busy():
        s = parse(scrape(url))
        busy = value(s, "guestkit_worker_active_jobs") == 1 and value(s, "guestkit_worker_queue_depth") == 3
        return s if busy else None
    s = wait_for(busy, what="one active, three waiting")
    assert value(s, "guestkit_worker_max_concurrent_jobs") == 1
    status, _, body = get(url + "/health")
    health = json.loads(body)
    assert (status, health["active_jobs"], health["queue_depth"], health["max_concurrent"]) == (200, 1, 3, 1)


@pytest.mark.integration
def test_prometheus_scrapes_worker(dirs, daemon, tmp_path):
    prometheus = require_tool("prometheus")
    for i in range(2):
        write_job(dirs.jobs, make_job(f"prom-ok-{i:05d}"))
    write_job(dirs.jobs, make_job("prom-rejected1", execution={"timeout_seconds": 0}))
    proc, url = daemon()
    wait_for(lambda: len(dirs.all_results()) == 3, what="three results")
    target = urllib.parse.urlparse(url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                      f"  - job_name: guestkit-worker\n    static_configs:\n      - targets: ['{target}']\n")
    prom, port = start_and_find_port([prometheus, f"--config.file={config}",
                                      f"--storage.tsdb.path={tmp_path / 'data'}",
                                      "--web.listen-address=127.0.0.1:0", "--log.level=warn"], "prometheus")
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query?query="

        def query(expr):
            status, _, body = get(api + urllib.parse.quote(expr))
            data = json.loads(body)
            if status != 200 or data["status"] != "success":
                return {}
            return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1])
                    for r in data["data"]["result"]}
        up = wait_for(lambda: query('up{job="guestkit-worker"}') or None, timeout=90, what="a scrape")
        assert list(up.values()) == [1.0]
        got = wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(
            query('sum by (status) (guestkit_worker_jobs_total{operation="system.echo"}) > 0')),
            timeout=30, what="job counts of both statuses")
        assert got == {'{"status": "completed"}': 2.0, '{"status": "rejected"}': 1.0}
    finally:
        stop(prom)


@pytest.mark.integration
def test_node_exporter_serves_textfile(dirs, tmp_path):
    exporter = require_tool("prometheus-node-exporter")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    write_job(dirs.jobs, make_job("textfile-ok-001"))
    write_job(dirs.jobs, make_job("textfile-ok-002"))
    cli("--once", "--textfile-dir", str(textdir), *dirs.args(), check=0)
    prom = textdir / "guestkit_worker.prom"
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    text = prom.read_text()
    assert "_created" not in text and "process_" not in text
    s = parse(text)
    assert value(s, "guestkit_worker_jobs_total", operation="system.echo", status="completed") == 2
    run_ts = value(s, "guestkit_worker_last_run_timestamp_seconds")
    assert value(s, "guestkit_worker_last_success_timestamp_seconds") == run_ts
    node, port = start_and_find_port([exporter, "--web.listen-address=127.0.0.1:0",
                                      "--collector.disable-defaults", "--collector.textfile",
                                      f"--collector.textfile.directory={textdir}"],
                                     "node_exporter")
    try:
        n = parse(scrape(f"http://127.0.0.1:{port}"))
        assert value(n, "node_textfile_scrape_error") == 0
        assert value(n, "guestkit_worker_jobs_total", operation="system.echo", status="completed") == 2
        assert value(n, "guestkit_worker_last_run_timestamp_seconds") == run_ts
    finally:
        stop(node)


@pytest.mark.integration
def test_failed_run_updates_textfile_but_keeps_last_success(dirs, tmp_path):
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    write_job(dirs.jobs, make_job("textfile-ok-003"))
    cli("--once", "--textfile-dir", str(textdir), *dirs.args(), check=0)
    first = parse((textdir / "guestkit_worker.prom").read_text())
    write_job(dirs.jobs, make_job("textfile-bad-01", "no.such"))
    cli("--once", "--textfile-dir", str(textdir), *dirs.args(), check=1)
    second = parse((textdir / "guestkit_worker.prom").read_text())
    assert value(second, "guestkit_worker_jobs_total", operation="unknown", status="rejected") == 1
    assert value(second, "guestkit_worker_last_run_timestamp_seconds") > \
        value(first, "guestkit_worker_last_run_timestamp_seconds")
    assert value(second, "guestkit_worker_last_success_timestamp_seconds") == \
        value(first, "guestkit_worker_last_success_timestamp_seconds")
    assert not [n for n in os.listdir(textdir) if n != "guestkit_worker.prom"]


@pytest.mark.integration
def test_health_flips_with_unwritable_jobs_dir(dirs, daemon):
    chattr = require_tool("chattr")
    proc, url = daemon()
    status, headers, body = get(url + "/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "healthy" and doc["worker_id"] == "metrics-w1" and doc["checks"]["jobs_dir"]["ok"]
    subprocess.run([chattr, "+i", dirs.jobs], check=True)
    try:
        status, _, body = get(url + "/health")
        doc = json.loads(body)
        assert status == 503 and doc["status"] == "unhealthy"
        assert (doc["checks"]["jobs_dir"]["ok"] is False
                and "not permitted" in doc["checks"]["jobs_dir"]["detail"])
    finally:
        subprocess.run([chattr, "-i", dirs.jobs], check=True)
    status, _, body = get(url + "/health")
    assert status == 200 and json.loads(body)["status"] == "healthy"


@pytest.mark.integration
def test_port_in_use_exits_2_before_claiming(dirs):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]
    try:
        path = write_job(dirs.jobs, make_job("port-busy-0001"))
        proc = cli("run", "--metrics-addr", f"127.0.0.1:{port}", *dirs.args(), timeout=30)
        assert proc.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
        assert os.path.exists(path)  # not claimed
        assert not dirs.all_results()
    finally:
        sock.close()


def test_made_up_operations_do_not_grow_series(tmp_path):
    from guestkit_worker.runtime.config import WorkerConfig
    from guestkit_worker.runtime.worker import Worker
    registry = CollectorRegistry()
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    cfg = WorkerConfig(jobs_dir=str(jobs), results_dir=str(tmp_path / "results"),
                       work_dir=str(tmp_path / "work"), worker_id="cardinality", once=True, durable=False)
    worker = Worker(cfg, registry=registry)

    def jobs_series():
        return series(parse(_expose(registry)), "guestkit_worker_jobs_total")
    before = jobs_series()
    for i in range(10000):
        write_job(str(jobs), make_job(f"madeup-{i:06d}", f"made.up{i}"))
    worker.open()
    assert worker.run() == 1
    after = jobs_series()
    assert set(after) == set(before)
    assert value(parse(_expose(registry)), "guestkit_worker_jobs_total", operation="unknown",
                 status="rejected") == 10000
    assert len(os.listdir(tmp_path / "results")) == 10000 + 1  # + .idempotency


def _expose(registry):
    from prometheus_client import generate_latest
    return generate_latest(registry).decode()
