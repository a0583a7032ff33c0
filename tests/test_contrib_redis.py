"""contrib/ for a fleet on Redis, checked with the real tools: promtool (config, rules, the
alerts' unit tests, the dashboard's PromQL) and Debian's prometheus-redis-exporter run with
the shipped --check-streams arguments against a real redis-server holding a pool's streams."""

import json
import re
import shlex
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import make_job, require_tool, wait_for
from redisfixture import free_port, require_redis_py

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "contrib" / "prometheus" / "redis-fleet"
DASHBOARD = ROOT / "contrib" / "grafana" / "guestkit-fleet.json"
EXPORTER_ARGS = ROOT / "contrib" / "default" / "prometheus-redis-exporter"
FLEET_ENV = ROOT / "contrib" / "default" / "guestkit-worker-redis"
DROPIN = ROOT / "contrib" / "systemd" / "guestkit-worker.service.d" / "redis.conf"
PROMQL_FUNCS = {"delta", "increase", "max", "sum", "rate", "by", "on", "unless", "group_left", "group_right",
                "without", "ignoring"}


def _run(argv, cwd=None):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def _alert_exprs():
    text = (FLEET / "alerts.yml").read_text()
    names = re.findall(r"^\s*- alert: (\S+)", text, re.M)
    return names, text


def _dashboard_exprs():
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


def metric_names(expr):
    """Metric names in a PromQL expression (identifiers before '{' or standing alone)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)       # drop string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                  # and label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                  # and ranges
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)
    labels = {"instance", "job", "db", "stream", "pool", "reason", "operation", "consumer", "group"}
    return {w for w in words if w not in PROMQL_FUNCS and w not in labels}


@pytest.mark.integration
def test_fleet_prometheus_config_rules_and_alert_unit_tests(tmp_path):
    promtool = require_tool("promtool")
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        shutil.copy(FLEET / name, tmp_path / name)
    for argv in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        rc, out = _run([promtool, *argv], cwd=tmp_path)
        assert rc == 0, out
    assert "SUCCESS" in out


def test_every_fleet_alert_has_a_test_group_that_fires_it():
    names, _ = _alert_exprs()
    assert set(names) == {"GuestkitDeadLettersGrowing", "GuestkitNoConsumer",
                          "GuestkitOldestWaitingJobTooOld", "GuestkitLeasesLost", "GuestkitRedisUnreachable"}
    tests = (FLEET / "alerts_test.yml").read_text()
    for name in names:
        assert re.search(rf"- name: {name}\n", tests), name
        assert re.search(rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:", tests), name
        assert re.search(rf"alertname: {name}\n\s+exp_alerts: \[\]", tests), name


@pytest.mark.integration
def test_fleet_dashboard_queries_parse(tmp_path):
    promtool = require_tool("promtool")
    exprs = _dashboard_exprs()
    assert len(exprs) >= 8
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "1m").replace("$pool", "default")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "q.yml").write_text(json.dumps(rules))  # JSON is YAML
    rc, out = _run([promtool, "check", "rules", "q.yml"], cwd=tmp_path)
    assert rc == 0, out


@pytest.fixture
def exporter(redis_server):
    """prometheus-redis-exporter started with the shipped ARGS (its --redis.addr pointed at the
    test server, its port free); yields a function returning the scraped text."""
    exe = require_tool("prometheus-redis-exporter")
    line = next(ln for ln in EXPORTER_ARGS.read_text().splitlines() if ln.startswith("ARGS="))
    args = shlex.split(shlex.split(line[len("ARGS="):])[0])
    assert any(a.startswith("--check-streams=") for a in args)
    args = [a for a in args if not a.startswith("--redis.addr=")]
    port = free_port()
    proc = subprocess.Popen([exe, *args, f"--redis.addr={redis_server.url}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()
    try:
        wait_for(lambda: _try(scrape), timeout=20, what="redis_exporter")
        yield scrape
    finally:
        proc.terminate()
        proc.wait(10)


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def _value(text, name, **labels):
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.integration
def test_exporter_with_the_shipped_arguments_sees_the_pools_streams(exporter, redis_server, pool):
    require_redis_py()
    from guestkit_worker.transports.base import Outcome
    from guestkit_worker.transports.redis import Keys, RedisTransport
    t = RedisTransport(redis_server.url, "exporter-w1", pool=pool)
    t.open()
    try:
        for i in range(3):
            t.submit(make_job(f"exp-job-{i:05d}"))
        redis_server.cli("XADD", Keys(pool).jobs, "*", "job", "not json")
        got = t.fetch(4, 0.1)  # three jobs and the poison entry
        poison = [d for d in got if d.poison]
        t.commit([Outcome(d, "rejected", failed=True) for d in poison])
        k = Keys(pool)
        text = wait_for(lambda: (lambda s: s if _value(s, "redis_stream_length", stream=k.dead) else None)(
            exporter()), timeout=20, what="the pool's streams in the exporter")
        assert _value(text, "redis_stream_length", stream=k.jobs) == 3
        assert _value(text, "redis_stream_group_messages_pending", stream=k.jobs,
                      group="guestkit-workers") == 3
        assert _value(text, "redis_stream_group_consumers", stream=k.jobs, group="guestkit-workers") == 1
        assert _value(text, "redis_stream_length", stream=k.dead) == 1
        assert _value(text, "redis_stream_group_consumer_idle_seconds", stream=k.jobs,
                      consumer="exporter-w1") is not None
        # every series the fleet alerts and dashboard name is exported by redis_exporter or by a worker
        from prometheus_client import CollectorRegistry, generate_latest

        from guestkit_worker.metrics.families import WorkerMetrics
        reg = CollectorRegistry()
        WorkerMetrics(operations=["system.echo"], handlers=["system.echo"], worker_id="w", pool="p",
                      version="0", max_concurrent=1, registry=reg)
        exposition = text + generate_latest(reg).decode()
        exported = {ln.split("{")[0].split(" ")[0] for ln in exposition.splitlines()
                    if ln and not ln.startswith("#")}
        names, alerts = _alert_exprs()
        exprs = [m.group(1) for m in re.finditer(r"expr: (?:\|\n)?((?:.|\n)*?)\n\s+(?:for|labels):", alerts)]
        assert len(exprs) == len(names)
        used = set().union(*(metric_names(e) for e in exprs + _dashboard_exprs()))
        assert used and used <= exported, used - exported
    finally:
        t.close()


def test_fleet_env_files_and_drop_in():
    assign = re.compile(r'^[A-Z][A-Z0-9_]*=("[^"$`\\]*"|[^\s"$`\\]*)$')
    for path in (FLEET_ENV, EXPORTER_ARGS):
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                assert assign.match(line), (path.name, line)
    env = dict(ln.split("=", 1) for ln in FLEET_ENV.read_text().splitlines() if ln and not ln.startswith("#"))
    assert env["GUESTKIT_WORKER_TRANSPORT"] == "redis"
    assert "@" not in env["GUESTKIT_WORKER_REDIS_URL"]  # no password in the file
    dropin = DROPIN.read_text()
    assert "EnvironmentFile=/etc/default/guestkit-worker-redis" in dropin
    assert re.search(r"^LoadCredential=redis-password:\S+$", dropin, re.M)
    assert "Environment=GUESTKIT_WORKER_REDIS_PASSWORD_FILE=%d/redis-password" in dropin


def test_every_variable_the_fleet_files_name_is_a_worker_option():
    """Set or commented out (the TLS files), each GUESTKIT_WORKER_* name in the env file and the
    drop-in is one the worker reads."""
    from guestkit_worker.cli.options import RUN_OPTIONS, env_name
    known = {env_name(dest) for _, dest, *_ in RUN_OPTIONS}
    for path in (FLEET_ENV, DROPIN):
        named = set(re.findall(r"\b(GUESTKIT_WORKER_[A-Z0-9_]+)=", path.read_text()))
        assert named and named <= known, (path.name, named - known)
    assert "#GUESTKIT_WORKER_REDIS_TLS_CA_FILE=" in FLEET_ENV.read_text()
    assert "#Environment=GUESTKIT_WORKER_REDIS_TLS_KEY_FILE=%d/redis-client-key" in DROPIN.read_text()
