"""Checks of contrib/ with the real tools: promtool, systemd-analyze, systemd-sysusers/-tmpfiles, sh/flock.

Tool policy
  * promtool (Debian package ``prometheus``) must be present: missing -> FAIL when CI=true, skip
    (with the reason) elsewhere.
  * systemd-analyze and friends (Debian ``systemd``) are used where installed; missing -> skip, in CI
    too.  ``systemd-analyze verify`` does not need systemd as PID 1; a probe unit tells whether it
    works on this machine at all, and the tests skip (with the probe's output) if it does not.

``systemd-analyze verify`` fails a unit whose ExecStart binary does not exist.  The test therefore
verifies copies in which *only* the absolute path /usr/bin/guestkit-worker is replaced by an
executable stub; test_units_facts asserts separately that the shipped units use that exact path, so
nothing else is hidden from the verifier.  Documentation=man: links are not checked (--man=no): the
man page is installed by the package, not present in a checkout.
"""

import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for
from metricskit import listening_ports

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
PROM = CONTRIB / "prometheus"
SYSTEMD = CONTRIB / "systemd"
DASHBOARD = CONTRIB / "grafana" / "guestkit-worker.json"
CRON = CONTRIB / "cron" / "guestkit-worker"
ENVFILE = CONTRIB / "default" / "guestkit-worker"
README = CONTRIB / "README.md"

BINARY = "/usr/bin/guestkit-worker"
REFRESH = "/usr/libexec/guestkit-worker/guestkit-worker-vulndb-refresh"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
UNITS = ("guestkit-worker.service", "guestkit-worker-once.service", "guestkit-worker-once.timer",
         "guestkit-worker-prune.service", "guestkit-worker-prune.timer",
         "guestkit-worker-vulndb.service", "guestkit-worker-vulndb.timer")

COUNTERS = {
    "guestkit_worker_jobs_total", "guestkit_handler_executions_total",
    "guestkit_checksum_verifications_total", "guestkit_worker_disk_read_bytes_total",
    "guestkit_worker_disk_write_bytes_total", "guestkit_api_requests_total",
    "guestkit_api_connections_rejected_total", "guestkit_scan_findings_total", "guestkit_scans_total",
    "guestkit_worker_dead_lettered_total",
}
#: served by a daemon's REST API only (never in a one-shot textfile); tests/test_api_load.py reads them
API_METRICS = {"guestkit_api_requests_total", "guestkit_api_connections_rejected_total",
               "guestkit_api_waiting_requests", "guestkit_api_request_duration_seconds_bucket"}
GAUGES = {
    "guestkit_worker_active_jobs", "guestkit_worker_queue_depth", "guestkit_worker_info",
    "guestkit_worker_max_concurrent_jobs", "guestkit_worker_last_success_timestamp_seconds",
    "guestkit_worker_last_run_timestamp_seconds", "guestkit_worker_health_check",
    "guestkit_worker_oldest_running_job_seconds", "guestkit_api_waiting_requests",
    "guestkit_vuln_db_age_seconds", "guestkit_vuln_db_records",
}
HISTOGRAMS = {
    "guestkit_worker_jobs_duration_seconds", "guestkit_handler_duration_seconds",
    "guestkit_worker_queue_wait_seconds", "guestkit_api_request_duration_seconds",
}
ALLOWED_METRICS = (COUNTERS | GAUGES | {"up"}
                   | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")})

REQUIRED_ALERTS = {"HighJobFailureRate", "WorkerStalled", "ChecksumFailures", "WorkerDown", "Saturated",
                   "OneShotStale", "OneShotNeverSucceeded", "HandlerErrors", "HealthCheckFailing",
                   "JobRunningLong", "VulnDatabaseStale"}


# ----------------------------------------------------------------------------------------- tools

def _need(tool, *, fail_in_ci, package="prometheus"):
    path = shutil.which(tool)
    if path:
        return path
    reason = f"{tool} not installed"
    if fail_in_ci and os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required in CI: apt-get install {package})")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def promtool():
    return _need("promtool", fail_in_ci=True)


@pytest.fixture(scope="session")
def systemd_analyze(tmp_path_factory):
    tool = _need("systemd-analyze", fail_in_ci=False, package="systemd")
    probe = tmp_path_factory.mktemp("probe") / "probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    r = subprocess.run([tool, "verify", "--man=no", str(probe)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"systemd-analyze verify does not work on this machine: {r.stdout}{r.stderr}".strip())
    return tool


def _run(cmd, cwd=None, **kw):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, **kw)
    return r.returncode, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------- PromQL

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "atan2", "inf", "nan"}


def metric_names(expr):
    """Metric names a PromQL expression selects (good enough for the expressions in contrib/)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)                 # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                # range and subquery selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if m.group(0).lower() in _KEYWORDS or s[m.end():].lstrip().startswith("("):
            continue  # keyword, or function / aggregation call
        names.add(m.group(0))
    return names


def test_metric_names_helper():
    e = ('sum by (operation) (rate(guestkit_worker_jobs_total{status="completed"}[5m]) * on (instance, job) '
         'group_left (worker_id) guestkit_worker_info{worker_id=~"w1"}) > bool 1e3 unless up offset 5m')
    assert metric_names(e) == {"guestkit_worker_jobs_total", "guestkit_worker_info", "up"}


# ------------------------------------------------------------------------- alerts.yml, no PyYAML
# The project does not depend on PyYAML; alerts.yml is read with a small parser for its own layout.

def alert_rules():
    """[{alert, expr, for, labels{}, annotations{}}] from alerts.yml (block or one-line values)."""
    lines = (PROM / "alerts.yml").read_text().splitlines()
    rules, cur, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)- alert:\s*(\S+)\s*$", line)
        if m:
            cur = {"alert": m.group(2), "labels": {}, "annotations": {}, "for": None, "expr": None}
            rules.append(cur)
            section = None
            i += 1
            continue
        if cur is not None:
            m = re.match(r"^(\s+)(expr|for|labels|annotations|summary|description|severity|service):\s*(.*)$",
                         line)
            if m:
                indent, key, value = len(m.group(1)), m.group(2), m.group(3)
                if value in ("|", ">-", ">", "|-"):
                    block = []
                    i += 1
                    while i < len(lines) and (not lines[i].strip()
                                              or len(lines[i]) - len(lines[i].lstrip()) > indent):
                        block.append(lines[i].strip())
                        i += 1
                    value = ("\n" if value.startswith("|") else " ").join(b for b in block if b)
                else:
                    value = value.strip().strip('"')
                    i += 1
                if key in ("labels", "annotations"):
                    section = key
                elif key in ("expr", "for"):
                    cur[key] = value
                else:
                    cur[section][key] = value
                continue
        i += 1
    return rules


def test_alert_rules_structure():
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert names >= REQUIRED_ALERTS, f"missing alerts: {REQUIRED_ALERTS - names}"
    for r in rules:
        assert r["expr"], r
        assert r["for"] and re.fullmatch(r"\d+[smh]", r["for"]), (r["alert"], r["for"])
        assert r["labels"].get("severity") in ("critical", "warning", "info"), r
        for key in ("summary", "description"):
            assert "$labels." in r["annotations"].get(key, ""), (r["alert"], key)


def test_alert_rules_name_only_known_metrics():
    for r in alert_rules():
        unknown = metric_names(r["expr"]) - ALLOWED_METRICS
        assert not unknown, f"{r['alert']} uses unknown metrics {unknown}"


def test_every_alert_has_firing_and_silent_unit_tests():
    text = (PROM / "alerts_test.yml").read_text()
    for r in alert_rules():
        group = re.search(rf"- name: {r['alert']}\n(.*?)(?=\n  - name: |\Z)", text, re.S)
        assert group, f"no test group for {r['alert']}"
        body = group.group(1)
        assert f"alertname: {r['alert']}" in body
        assert "exp_labels:" in body, f"{r['alert']}: no case where it fires"
        assert "# silent" in body, f"{r['alert']}: no series that must stay silent"


def test_alerts_and_readme_name_the_shipped_units():
    """A unit an alert tells the operator to look at is one contrib/systemd ships, and the README's
    vulnerability database section points at those units instead of an inline copy of its own."""
    for r in alert_rules():
        for unit in re.findall(r"[\w@.-]+\.(?:timer|service)\b", " ".join(r["annotations"].values())):
            assert (SYSTEMD / unit).is_file(), f"{r['alert']} names {unit}, which contrib/systemd lacks"
    text = (ROOT / "README.md").read_text()
    section = re.search(r"\n## Vulnerability database\n(.*?)\n## ", text, re.S).group(1)
    assert "contrib/systemd/guestkit-worker-vulndb.service" in section
    assert "[Timer]" not in section and "[Service]" not in section


# -------------------------------------------------------------------------------------- promtool

@pytest.fixture
def prom_dir(tmp_path):
    """prometheus.yml, alerts.yml and alerts_test.yml side by side (rule_files paths are relative)."""
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    return tmp_path


@pytest.mark.integration
def test_promtool_check_config(promtool, prom_dir):
    rc, out = _run([promtool, "check", "config", "prometheus.yml"], cwd=prom_dir)
    print(out)
    assert rc == 0, out
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in out
    assert "SUCCESS: 1 rule files found" in out


@pytest.mark.integration
def test_promtool_check_rules(promtool, prom_dir):
    rc, out = _run([promtool, "check", "rules", "alerts.yml"], cwd=prom_dir)
    print(out)
    assert rc == 0, out
    m = re.search(r"SUCCESS: (\d+) rules found", out)
    assert m and int(m.group(1)) == len(alert_rules()), out


@pytest.mark.integration
def test_promtool_test_rules(promtool, prom_dir):
    rc, out = _run([promtool, "test", "rules", "alerts_test.yml"], cwd=prom_dir)
    print(out)
    assert rc == 0, out
    assert "SUCCESS" in out and "FAILED" not in out, out


# ------------------------------------------------------------------------------------- dashboard

def dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_targets(d):
    return [(p, t) for p in all_panels(d) for t in p.get("targets", []) if t.get("expr")]


def concrete(expr, worker_id=".*"):
    """Replace the Grafana variables a panel query may use by values Prometheus accepts."""
    out = (expr.replace("$__rate_interval", "5m").replace("${__rate_interval}", "5m")
           .replace("$__interval", "1m").replace("${__interval}", "1m")
           .replace("$__range", "10m").replace("${__range}", "10m")
           .replace("${worker_id}", worker_id).replace("$worker_id", worker_id))
    assert "$" not in out, f"unhandled Grafana variable in {expr!r}"
    return out


def test_dashboard_json_and_variables():
    d = dashboard()
    assert d["title"] and d["uid"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    wid = variables["worker_id"]
    assert wid["type"] == "query"
    assert wid["definition"] == "label_values(guestkit_worker_info, worker_id)"
    assert wid["query"]["query"] == "label_values(guestkit_worker_info, worker_id)"
    assert wid["datasource"]["uid"] == "${datasource}"
    targets = dashboard_targets(d)
    assert targets
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p, t in targets:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert t["datasource"]["uid"] == "${datasource}", p["title"]
        if "guestkit_worker_info" not in metric_names(t["expr"]) and metric_names(t["expr"]) != {"up"}:
            pytest.fail(f"panel {p['title']!r} does not follow the worker_id selection: {t['expr']}")
        if "guestkit_worker_info" in t["expr"]:
            assert '$worker_id' in t["expr"], p["title"]


def test_dashboard_names_only_known_metrics():
    for p, t in dashboard_targets(dashboard()):
        unknown = metric_names(t["expr"]) - ALLOWED_METRICS
        assert not unknown, f"panel {p['title']!r} uses unknown metrics {unknown}"


def _has(panels, title_rx, expr_rx):
    return any(re.search(title_rx, p["title"], re.I)
               and all(any(re.search(rx, t["expr"]) for t in p.get("targets", []))
                       for rx in ([expr_rx] if isinstance(expr_rx, str) else expr_rx))
               for p in panels)


@pytest.mark.parametrize("topic,title_rx,expr_rx", [
    ("job throughput", r"throughput", r"rate\(guestkit_worker_jobs_total\["),
    ("success rate", r"success rate", r'guestkit_worker_jobs_total\{status="completed"\}'),
    ("job duration p50/p95/p99", r"duration",
     [rf"histogram_quantile\({q}, .*guestkit_worker_jobs_duration_seconds_bucket"
      for q in ("0.5", "0.95", "0.99")]),
    ("active jobs vs capacity", r"active.*capacity", [r"guestkit_worker_active_jobs",
                                                      r"guestkit_worker_max_concurrent_jobs"]),
    ("queue depth", r"queue depth", r"guestkit_worker_queue_depth"),
    ("queue wait", r"queue wait", r"histogram_quantile\(.*guestkit_worker_queue_wait_seconds_bucket"),
    ("checksum failures", r"checksum", r"guestkit_checksum_verifications_total"),
    ("handler errors", r"handler errors", r'guestkit_handler_executions_total\{status=~"error\|timeout"\}'),
    ("disk read/write rate", r"disk", [r"rate\(guestkit_worker_disk_read_bytes_total",
                                       r"rate\(guestkit_worker_disk_write_bytes_total"]),
    ("failing health checks", r"health", r"guestkit_worker_health_check"),
    ("oldest running job", r"oldest running", r"guestkit_worker_oldest_running_job_seconds"),
    ("API requests", r"API requests", r"rate\(guestkit_api_requests_total\["),
    ("API errors", r"API error", [r'guestkit_api_requests_total\{code=~"5\.\."\}',
                                  r'guestkit_api_requests_total\{code=~"4\.\."\}']),
    ("API latency", r"API latency",
     r"histogram_quantile\(0.95, .*guestkit_api_request_duration_seconds_bucket"),
    ("API waits and refusals", r"API waiting", [r"guestkit_api_waiting_requests",
                                                r"rate\(guestkit_api_connections_rejected_total\["]),
    ("vulnerability database age", r"vulnerability database age", r"guestkit_vuln_db_age_seconds"),
    ("vulnerability database records", r"records by ecosystem", r"guestkit_vuln_db_records"),
    ("scan findings", r"findings", r"rate\(guestkit_scan_findings_total\["),
])
def test_dashboard_topic(topic, title_rx, expr_rx):
    assert _has(list(all_panels(dashboard())), title_rx, expr_rx), f"no panel for {topic}"


def _rules_file(path, exprs):
    # JSON is YAML: no PyYAML needed to write a rules file.
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}, indent=1))


@pytest.mark.integration
def test_dashboard_promql_parses(promtool, tmp_path):
    exprs = [concrete(t["expr"]) for _, t in dashboard_targets(dashboard())]
    _rules_file(tmp_path / "dashboard_rules.yml", exprs)
    rc, out = _run([promtool, "check", "rules", "dashboard_rules.yml"], cwd=tmp_path)
    print(out)
    assert rc == 0, out
    assert f"SUCCESS: {len(exprs)} rules found" in out, out


def _histogram(name, labels, n=15):
    rows = []
    for k, le in enumerate(["1", "2", "4", "8", "16", "+Inf"]):
        rows.append((f'{name}_bucket{{{labels}, le="{le}"}}', f"0+{k + 1}x{n}"))
    rows.append((f"{name}_count{{{labels}}}", f"0+6x{n}"))
    rows.append((f"{name}_sum{{{labels}}}", f"0+30x{n}"))
    return rows


def _synthetic_series():
    """Two daemons (w1, w2; w2 is not selected) and one one-shot host (n1), every family present."""
    series = []
    for inst, wid, job in (("w1:9090", "w1", "guestkit-worker"), ("w2:9090", "w2", "guestkit-worker"),
                           ("n1:9100", "n1", "node")):
        base = f'job="{job}", instance="{inst}"'
        series.append((f'guestkit_worker_info{{{base}, worker_id="{wid}", pool="default", version="0.1"}}',
                       "1x15"))
        series.append((f"up{{{base}}}", "1x15"))
        for op in ("guestkit.inspect", "system.echo"):
            for st, step in (("completed", 3), ("failed", 1), ("timeout", 1), ("cancelled", 0),
                             ("rejected", 1), ("duplicate", 0)):
                lab = f'{base}, operation="{op}", status="{st}"'
                series.append((f"guestkit_worker_jobs_total{{{lab}}}", f"0+{step}x15"))
                series += _histogram("guestkit_worker_jobs_duration_seconds", lab)
        for st, step in (("success", 3), ("error", 1), ("timeout", 1)):
            lab = f'{base}, handler="guestkit.inspect", status="{st}"'
            series.append((f"guestkit_handler_executions_total{{{lab}}}", f"0+{step}x15"))
            series += _histogram("guestkit_handler_duration_seconds", lab)
        for st in ("success", "failure", "skipped"):
            series.append((f'guestkit_checksum_verifications_total{{{base}, status="{st}"}}', "0+1x15"))
        series += _histogram("guestkit_worker_queue_wait_seconds", base)
        series += [(f"guestkit_worker_active_jobs{{{base}}}", "2x15"),
                   (f"guestkit_worker_max_concurrent_jobs{{{base}}}", "4x15"),
                   (f"guestkit_worker_queue_depth{{{base}}}", "3x15"),
                   (f"guestkit_worker_disk_read_bytes_total{{{base}}}", "0+1000000x15"),
                   (f"guestkit_worker_disk_write_bytes_total{{{base}}}", "0+500000x15"),
                   (f"guestkit_worker_last_success_timestamp_seconds{{{base}}}", "0+60x15")]
        if job == "node":
            series.append((f"guestkit_worker_last_run_timestamp_seconds{{{base}}}", "0+60x15"))
        else:  # read at scrape time from a live daemon only; the REST API beside its jobs
            series += [(f'guestkit_worker_health_check{{{base}, check="main_loop"}}', "1x15"),
                       (f"guestkit_worker_oldest_running_job_seconds{{{base}}}", "0+60x15"),
                       (f"guestkit_api_waiting_requests{{{base}}}", "2x15"),
                       (f"guestkit_api_connections_rejected_total{{{base}}}", "0+1x15")]
            for route, code, step in (("/api/v1/jobs", "202", 4), ("/api/v1/jobs/{id}", "404", 1),
                                      ("/api/v1/jobs", "503", 1)):
                series.append((f'guestkit_api_requests_total{{{base}, route="{route}", method="POST", '
                               f'code="{code}"}}', f"0+{step}x15"))
            series += _histogram("guestkit_api_request_duration_seconds", f'{base}, route="/api/v1/jobs"')
            series += [(f"guestkit_vuln_db_age_seconds{{{base}}}", "3600+60x15"),
                       (f'guestkit_vuln_db_records{{{base}, ecosystem="Debian:12"}}', "65000x15")]
            series += [(f'guestkit_scan_findings_total{{{base}, severity="{sev}"}}', "0+3x15")
                       for sev in ("critical", "high", "medium", "low", "unknown")]
    return series


@pytest.mark.integration
def test_dashboard_queries_return_data(promtool, tmp_path):
    """Every panel query, with worker_id set as Grafana renders a multi-selection, returns samples.

    Catches what parsing cannot: wrong join labels, many-to-many matches, label filters that never
    match.  Each expression E is tested as `count(E) > bool 0`, which is {} 1 only if E is non-empty.
    """
    targets = dashboard_targets(dashboard())
    tests = []
    for _, t in targets:
        e = concrete(t["expr"], worker_id="(w1|n1)")
        tests.append({"expr": f"count(\n{e}\n) > bool 0", "eval_time": "10m",
                      "exp_samples": [{"labels": "{}", "value": 1}]})
    doc = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in _synthetic_series()],
        "promql_expr_test": tests}]}
    (tmp_path / "dashboard_test.yml").write_text(json.dumps(doc, indent=1))
    rc, out = _run([promtool, "test", "rules", "dashboard_test.yml"], cwd=tmp_path)
    print(out[-3000:])
    assert rc == 0, out[-6000:]
    assert "SUCCESS" in out


# --------------------------------------------------------------------------------------- systemd

def _parse_unit(path):
    """{(section, key): [values]} with backslash continuations joined (systemd syntax, not ini)."""
    out, section, pending = {}, None, ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def _one(unit, section, key):
    values = unit.get((section, key))
    assert values, f"{key}= missing in [{section}]"
    return values[-1]


def test_units_facts():
    daemon = _parse_unit(SYSTEMD / "guestkit-worker.service")
    once = _parse_unit(SYSTEMD / "guestkit-worker-once.service")
    timer = _parse_unit(SYSTEMD / "guestkit-worker-once.timer")
    # systemctl reload re-reads the token files and certificates (SIGHUP; tests/test_reload.py)
    assert _one(daemon, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    for unit in (daemon, once):
        argv = shlex.split(_one(unit, "Service", "ExecStart"))
        assert argv[0] == BINARY and argv[1] == "run"
        assert _one(unit, "Service", "User") == "guestkit-worker"
        assert "kvm" in _one(unit, "Service", "SupplementaryGroups").split()
        assert _one(unit, "Service", "EnvironmentFile") == "-/etc/default/guestkit-worker"
        state = _one(unit, "Service", "StateDirectory").split()
        assert {"guestkit-worker", "guestkit-worker/results", "guestkit-worker/work"} <= set(state)
        # systemd would reset a listed jobs/ to StateDirectoryMode= at every start, undoing the
        # shared 3770 of tmpfiles.d; it lies inside StateDirectory=guestkit-worker, so it is writable
        assert "guestkit-worker/jobs" not in state
        assert _one(unit, "Service", "StateDirectoryMode") == "0750"
        for flag, sub in (("--jobs-dir", "jobs"), ("--results-dir", "results"), ("--work-dir", "work")):
            assert argv[argv.index(flag) + 1] == f"%S/guestkit-worker/{sub}"
        assert "LIBGUESTFS_CACHEDIR=%C/guestkit-worker" in unit[("Service", "Environment")]
        assert _one(unit, "Service", "CacheDirectory") == "guestkit-worker"
        for key, want in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                          ("NoNewPrivileges", "yes"), ("KillMode", "mixed"), ("DevicePolicy", "closed")):
            assert _one(unit, "Service", key) == want, key
        assert "/dev/kvm rw" in unit[("Service", "DeviceAllow")]
        # the protections that break qemu must not be on
        for key in ("MemoryDenyWriteExecute", "PrivateDevices", "PrivateUsers"):
            assert unit.get(("Service", key), ["no"])[-1] in ("no", "false"), key
        # the drain must finish before systemd's SIGKILL
        drain = float(argv[argv.index("--shutdown-timeout") + 1])
        stop = _one(unit, "Service", "TimeoutStopSec")
        assert stop.endswith("s") and float(stop[:-1]) >= drain + 5, (drain, stop)
    d_argv = shlex.split(_one(daemon, "Service", "ExecStart"))
    assert "--once" not in d_argv and "--textfile-dir" not in d_argv
    assert _one(daemon, "Service", "Restart") == "on-failure"
    assert _one(daemon, "Install", "WantedBy") == "multi-user.target"
    o_argv = shlex.split(_one(once, "Service", "ExecStart"))
    assert "--once" in o_argv and o_argv[o_argv.index("--textfile-dir") + 1] == TEXTFILE_DIR
    assert _one(once, "Service", "Type") == "oneshot"
    assert TEXTFILE_DIR in _one(once, "Service", "ReadWritePaths")
    assert _one(timer, "Timer", "OnCalendar") == "*:0/5"
    assert _one(timer, "Install", "WantedBy") == "timers.target"


@pytest.mark.integration
def test_systemd_analyze_verify(systemd_analyze, tmp_path):
    stub = tmp_path / "guestkit-worker"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        text = text.replace(REFRESH, str(CONTRIB / "vulndb" / os.path.basename(REFRESH)))
        (tmp_path / name).write_text(text.replace(BINARY, str(stub)))
    rc, out = _run([systemd_analyze, "verify", "--man=no", *[str(tmp_path / n) for n in UNITS]], cwd=tmp_path)
    print(out)
    assert rc == 0, out
    ours = [line for line in out.splitlines() if "guestkit-worker" in line]
    assert not ours, "systemd-analyze verify complained:\n" + "\n".join(ours)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["guestkit-worker.service", "guestkit-worker-once.service",
                                  "guestkit-worker-prune.service", "guestkit-worker-vulndb.service"])
def test_systemd_security_exposure(systemd_analyze, tmp_path, name):
    """The sandbox keeps `systemd-analyze security` at 2.5 or below (0 = locked down, 10 = none)."""
    (tmp_path / name).write_text((SYSTEMD / name).read_text())
    rc, out = _run([systemd_analyze, "security", "--offline=true", "--no-pager", "--threshold=25",
                    str(tmp_path / name)], cwd=tmp_path)
    if "--offline" in out and ("unrecognized" in out or "Unknown option" in out):
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    summary = [line for line in out.splitlines() if "Overall exposure level" in line]
    print("\n".join(summary) or out)
    assert rc == 0, out[-3000:]
    assert summary, out[-3000:]


@pytest.mark.integration
def test_timer_calendar_is_valid(systemd_analyze):
    rc, out = _run([systemd_analyze, "calendar", "*:0/5"])
    assert rc == 0, out
    assert "Normalized form: *-*-* *:00/5:00" in out, out


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="creating files owned by guestkit-worker needs root")
def test_sysusers_and_tmpfiles(tmp_path):
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    if not (sysusers and tmpfiles):
        pytest.skip("systemd-sysusers / systemd-tmpfiles not installed")
    root = tmp_path / "root"
    for sub in ("etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d", "var/lib/prometheus/node-exporter"):
        (root / sub).mkdir(parents=True)
    shutil.copy(CONTRIB / "sysusers.d" / "guestkit-worker.conf", root / "usr/lib/sysusers.d")
    shutil.copy(CONTRIB / "tmpfiles.d" / "guestkit-worker.conf", root / "usr/lib/tmpfiles.d")
    rc, out = _run([sysusers, f"--root={root}"])
    assert rc == 0, out
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    user = passwd["guestkit-worker"]
    assert user[5] == "/var/lib/guestkit-worker" and user[6] == "/usr/sbin/nologin"
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    assert "guestkit-worker" in groups["kvm"][3].split(",")
    (root / "var/lib/guestkit-worker/jobs").mkdir(parents=True)  # as the worker makes it without tmpfiles
    (root / "var/lib/guestkit-worker/jobs").chmod(0o750)
    rc, out = _run([tmpfiles, f"--root={root}", "--create"])
    print(out)
    uid, gid = int(user[2]), int(groups["guestkit-worker"][2])
    for sub in ("var/lib/guestkit-worker", "var/lib/guestkit-worker/results", "var/lib/guestkit-worker/work",
                "var/cache/guestkit-worker", "var/lib/guestkit-worker/jobs/done",
                "var/lib/guestkit-worker/jobs/failed", "var/lib/guestkit-worker/jobs/.processing"):
        st = (root / sub).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, uid, gid), sub
    # jobs/, shared with the producers (group guestkit-worker): group write; sticky, so a producer
    # cannot delete or rename another's files (the worker owns the directory and claims by
    # rename); setgid, so job files get the worker's group whatever the producer's umask group
    st = (root / "var/lib/guestkit-worker/jobs").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o3770, uid, gid)
    assert st.st_mode & stat.S_ISVTX and st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IWGRP
    assert not st.st_mode & stat.S_IRWXO
    # The ACL line names the user, which systemd-tmpfiles resolves on the host, not in --root.
    try:
        pwd.getpwnam("guestkit-worker")
        host_has_user = True
    except KeyError:
        host_has_user = False
    if host_has_user:
        assert rc == 0, out
    else:
        assert all("ACL" in line for line in out.splitlines() if "ailed" in line), out


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="acting as the worker and two producers needs root")
def test_shared_jobs_dir_producers_submit_but_cannot_touch_each_others_jobs():
    """The jobs dir exactly as tmpfiles.d makes it; two producers (other users, members of group
    guestkit-worker, umask 027) submit; neither can delete or rename the other's job file; the
    worker, as the service user, claims, reads and runs both."""
    sysusers, tmpfiles, setpriv = (shutil.which(t)
                                   for t in ("systemd-sysusers", "systemd-tmpfiles", "setpriv"))
    if not (sysusers and tmpfiles and setpriv):
        pytest.skip("systemd-sysusers / systemd-tmpfiles / setpriv not installed")
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="gkw-shared-", dir="/tmp"))  # not under pytest's 0700 dir
    try:
        base.chmod(0o755)
        root = base / "root"
        for sub in ("etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"):
            (root / sub).mkdir(parents=True)
        shutil.copy(CONTRIB / "sysusers.d" / "guestkit-worker.conf", root / "usr/lib/sysusers.d")
        conf = (CONTRIB / "tmpfiles.d" / "guestkit-worker.conf").read_text()
        (root / "usr/lib/tmpfiles.d/guestkit-worker.conf").write_text(
            "".join(line + "\n" for line in conf.splitlines() if "/var/lib/guestkit-worker" in line))
        assert _run([sysusers, f"--root={root}"])[0] == 0
        assert _run([tmpfiles, f"--root={root}", "--create"])[0] == 0
        user = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                    if line.startswith("guestkit-worker:"))
        uid, gid = int(user[2]), int(user[3])
        state = root / "var/lib/guestkit-worker"
        jobs = state / "jobs"
        # an interpreter the other users can run (this one may live under /root), with a copy of
        # prometheus_client (pure Python) where they can read it
        python = "/usr/bin/python3"
        if not os.access(python, os.X_OK):
            pytest.skip("/usr/bin/python3 missing")
        import prometheus_client
        shutil.copytree(os.path.dirname(prometheus_client.__file__), base / "site" / "prometheus_client")
        env = dict(os.environ, PYTHONPATH=f"{ROOT}:{base / 'site'}", HOME=str(base))

        def as_user(uid_, gid_, groups, script):
            return subprocess.run([setpriv, f"--reuid={uid_}", f"--regid={gid_}", f"--groups={groups}",
                                   "/bin/sh", "-c", "umask 027; " + script], env=env, capture_output=True,
                                  text=True, timeout=120)

        for n, producer in ((1, 61001), (2, 61002)):
            doc = base / f"job{n}.json"
            doc.write_text(json.dumps({"version": "1.0", "job_id": f"shared-job-{n:04d}",
                                       "created_at": "2026-11-01T00:00:00Z", "kind": "VMOperation",
                                       "operation": "system.echo",
                                       "payload": {"type": "system.echo.v1", "data": {"from": producer}}}))
            doc.chmod(0o644)
            r = as_user(producer, producer, gid,
                        f"{python} -m guestkit_worker submit "
                        f"--jobs-dir {shlex.quote(str(jobs))} {shlex.quote(str(doc))}")
            assert r.returncode == 0, r.stdout + r.stderr
        for n, producer in ((1, 61001), (2, 61002)):  # 0640 as written, group the worker's (setgid)
            st = (jobs / f"shared-job-{n:04d}.json").stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (producer, gid, 0o640)
        one = shlex.quote(str(jobs / "shared-job-0001.json"))
        r = as_user(61002, 61002, gid,
                    f"rm -f {one}; mv {one} {shlex.quote(str(jobs / 'stolen.json'))}; "
                    f"mv {shlex.quote(str(jobs / 'done'))} {shlex.quote(str(jobs / 'moved'))}")
        assert r.stderr.count("Operation not permitted") == 3, r.stderr
        assert (jobs / "shared-job-0001.json").exists() and not (jobs / "stolen.json").exists()
        assert (jobs / "done").is_dir() and not (jobs / "moved").exists()
        r = as_user(uid, gid, gid, f"{python} -m guestkit_worker run --once "
                                   f"--metrics-enabled false --worker-id shared-w "
                                   f"--jobs-dir {shlex.quote(str(jobs))} "
                                   f"--results-dir {shlex.quote(str(state / 'results'))} "
                                   f"--work-dir {shlex.quote(str(state / 'work'))}")
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted(os.listdir(jobs / "done")) == ["shared-job-0001.json", "shared-job-0002.json"]
        for n, producer in ((1, 61001), (2, 61002)):
            result = json.loads((state / "results" / f"shared-job-{n:04d}-result.json").read_text())
            assert (result["status"], result["data"]) == ("completed", {"from": producer})
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------ cron

def cron_entries():
    env, jobs = {}, []
    for line in CRON.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", s)
        if m:
            env[m.group(1)] = m.group(2).strip('"')
            continue
        jobs.append(s)
    return env, jobs


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def test_cron_line():
    env, jobs = cron_entries()
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 6)
    schedule, user, command = fields[:5], fields[5], fields[6]
    assert len(schedule) == 5 and all(_CRON_FIELD.match(f) for f in schedule), schedule
    assert schedule == ["*/5", "*", "*", "*", "*"], "must match guestkit-worker-once.timer (*:0/5)"
    assert user == "guestkit-worker"
    assert "%" not in command, "cron turns % into a newline"
    argv = shlex.split(command)
    assert argv[:2] == ["flock", "-n"], "overlapping runs must be skipped"
    inner = shlex.split(argv[argv.index("-c") + 1])
    exe = inner.index(BINARY)
    assert inner[exe + 1] == "run" and "--once" in inner
    assert inner[inner.index("--textfile-dir") + 1] == TEXTFILE_DIR
    assert env.get("LIBGUESTFS_BACKEND") == "direct"
    assert CRON.name == "guestkit-worker" and "." not in CRON.name  # run-parts ignores names with dots


@pytest.mark.integration
def test_cron_command_runs(tmp_path):
    """Run the cron command through /bin/sh with a stub worker: env file exported, id defaulted, flock."""
    flock = shutil.which("flock")
    if not flock:
        pytest.skip("flock (util-linux) not installed")
    env, jobs = cron_entries()
    command = jobs[0].split(None, 6)[6]
    head, sep, _ = command.partition(" 2>&1 | logger ")
    assert sep, "output should go to syslog through logger"
    state, record = tmp_path / "state", tmp_path / "record"
    state.mkdir()
    stub = tmp_path / "guestkit-worker"
    stub.write_text('#!/bin/sh\n{ printf "%s\\n" "$@"; echo "--env--"; env; } > "$RECORD"\n')
    stub.chmod(0o755)
    envfile = tmp_path / "default"
    envfile.write_text(ENVFILE.read_text() + '\nGUESTKIT_WORKER_POOL="batch pool"\n')
    lock = tmp_path / "once.lock"
    head = (head.replace(BINARY, str(stub)).replace("/etc/default/guestkit-worker", str(envfile))
            .replace("/run/lock/guestkit-worker-once.lock", str(lock))
            .replace("/var/lib/guestkit-worker", str(state)))
    run_env = {k: v for k, v in env.items() if k not in ("SHELL", "MAILTO")}
    run_env.update(RECORD=str(record), PATH=os.environ.get("PATH", env["PATH"]))

    r = subprocess.run(["/bin/sh", "-c", head], env=run_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    argv, _, envdump = record.read_text().partition("--env--\n")
    argv = argv.splitlines()
    assert argv[:2] == ["run", "--once"]
    assert argv[argv.index("--textfile-dir") + 1] == TEXTFILE_DIR
    assert argv[argv.index("--jobs-dir") + 1] == f"{state}/jobs"
    got = dict(line.split("=", 1) for line in envdump.splitlines() if "=" in line)
    assert got["GUESTKIT_WORKER_POOL"] == "batch pool"          # env file sourced and exported
    assert got["GUESTKIT_WORKER_WORKER_ID"] == socket.gethostname()
    assert got["LIBGUESTFS_BACKEND"] == "direct"

    # a second run while the first still holds the lock does nothing
    record.unlink()
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = subprocess.run(["/bin/sh", "-c", head], env=run_env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and not record.exists()


@pytest.mark.integration
def test_env_file_is_plain_assignments():
    """Readable by systemd's EnvironmentFile= and by `set -a; . FILE` alike."""
    for line in ENVFILE.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        assert re.match(r'^[A-Z_][A-Z0-9_]*=("[^"$`\\]*"|[^\s"\'$`\\]*)$', s), s
    r = subprocess.run(["/bin/sh", "-c", 'set -a; . "$1"', "sh", str(ENVFILE)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------- README

def test_readme_covers_install_facts():
    text = README.read_text()
    for needle in ("guestkit-worker", "kvm", "/var/lib/guestkit-worker/jobs",
                   "/var/lib/guestkit-worker/results", "/var/lib/guestkit-worker/work",
                   "--collector.textfile.directory", TEXTFILE_DIR, "MemoryDenyWriteExecute", "PrivateDevices",
                   "SystemCallFilter", "/etc/default/guestkit-worker", "/etc/cron.d/guestkit-worker",
                   "promtool"):
        assert needle in text, needle


# ------------------------------------------------- one-shot textfile through the real node_exporter

@pytest.mark.integration
def test_textfile_through_node_exporter(tmp_path):
    """`run --once --textfile-dir` as in the units, read back by node_exporter's textfile collector.

    Proves the contract contrib/ relies on: the file name and directory flag work together, and every
    guestkit_* family the alerts and the dashboard use is really exported by a one-shot run.
    """
    exporter = _need("prometheus-node-exporter", fail_in_ci=True, package="prometheus-node-exporter")
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c",
                        "from guestkit_worker.cli.main import entry_point; entry_point()",
                        "run", "--once", "--textfile-dir", str(textfile_dir),
                        "--jobs-dir", str(tmp_path / "jobs"), "--results-dir", str(tmp_path / "results"),
                        "--work-dir", str(tmp_path / "work"), "--shutdown-timeout", "30",
                        "--metrics-enabled", "false", "--worker-id", "contrib-test"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (textfile_dir / "guestkit_worker.prom").is_file()

    proc = subprocess.Popen([exporter, "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={textfile_dir}",
                             "--web.listen-address=127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = wait_for(lambda: proc.poll() is None and min(listening_ports(proc.pid), default=None),
                        timeout=20, what="node_exporter listening")
        body, deadline = None, time.monotonic() + 20
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    body = resp.read().decode()
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"node_exporter exited: {proc.stderr.read().decode()}")
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert body is not None, "node_exporter did not answer"
    assert "node_textfile_scrape_error 0" in body
    exported = {m.group(1) for m in re.finditer(r"^([a-z_:][a-z0-9_:]*)(?:\{| )", body, re.M)}
    assert 'guestkit_worker_info{' in body and 'worker_id="contrib-test"' in body
    used = set()
    for rule in alert_rules():
        used |= metric_names(rule["expr"])
    for _, t in dashboard_targets(dashboard()):
        used |= metric_names(t["expr"])
    # /health's checks and the running jobs' age describe a live daemon: not in a finished run's file
    daemon_only = {"up", "guestkit_worker_health_check", "guestkit_worker_oldest_running_job_seconds"}
    # the vulnerability database's gauges exist once a scan (or a daemon's refresher) opened one
    daemon_only |= {"guestkit_vuln_db_age_seconds", "guestkit_vuln_db_records"}
    missing = {m for m in used - daemon_only - API_METRICS if m not in exported}
    assert not missing, f"used by contrib/ but not in the one-shot textfile: {missing}"
