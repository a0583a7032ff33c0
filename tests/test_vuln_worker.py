"""The vulnerability database in a real worker: --vuln-db / --vuln-db-max-age (and their
variables) reach the handlers through configure_vulns, scans fail with VULN_DB_UNAVAILABLE or
VULN_DB_STALE naming the flag, the worker lives on through a corrupt database, one index is
shared by jobs; and ``guestkit-worker vulndb info``."""

import json
import os
import signal
import time

import pytest
from conftest import cli, make_job, start_worker, wait_for, worker_env, write_job
from metricskit import parse, scrape, series, value, worker_url
from osvkit import CVSS_CRITICAL, affected, record, write_zip

pytestmark = pytest.mark.integration

OPENSSL = ["libssl3", "3.0.11-1~deb12u1", "openssl", "3.0.11-1~deb12u1", "amd64", "dpkg"]


def _stamp(seconds_ago):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def _database(base, age=3600, extra=()):
    path = os.path.join(str(base), "osv")
    write_zip(path, "Debian", [
        record("DSA-1", affected("Debian:12", "openssl",
                                 [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]),
               modified=_stamp(age), severity=CVSS_CRITICAL),
        record("DSA-2", affected("Debian:11", "openssl", [{"introduced": "0"}]), modified=_stamp(age + 60)),
    ], extra_members=extra)
    return path


def _scan_job(job_id, packages=(OPENSSL,)):
    return make_job(job_id, operation="test.vulnscan",
                    data={"ecosystem": "Debian:12", "packages": [list(p) for p in packages]})


def _run_once(dirs, jobs, *args, env=None):
    for doc in jobs:
        write_job(dirs.jobs, doc)
    proc = cli("run", "--once", *dirs.args(), "--metrics-enabled", "false", *args, env=env, timeout=180)
    return proc, dirs.all_results()


def test_flags_reach_the_handler_and_the_scan_matches(dirs):
    db = _database(dirs.base)
    proc, results = _run_once(dirs, [_scan_job("vuln-ok-0001")], "--vuln-db", db, "--vuln-db-max-age", "2d")
    assert proc.returncode == 0, proc.stderr
    data = results["vuln-ok-0001"]["data"]
    assert data["ids"] == ["DSA-1"] and data["max_age"] == 2 * 86400
    assert data["summary"] == {"total": 1, "fixable": 1, "by_severity": {
        "critical": 1, "high": 0, "medium": 0, "low": 0, "unknown": 0}}
    assert data["database"]["records"] == 2 and data["database"]["ecosystem_records"] == 1


def test_environment_variables_and_the_default_age(dirs):
    db = _database(dirs.base, age=6 * 86400)  # under the 7 d default
    env = worker_env(GUESTKIT_WORKER_VULN_DB=db)
    proc, results = _run_once(dirs, [_scan_job("vuln-env-0001")], env=env)
    assert results["vuln-env-0001"]["status"] == "completed", proc.stderr
    assert results["vuln-env-0001"]["data"]["max_age"] == 7 * 86400
    env["GUESTKIT_WORKER_VULN_DB_MAX_AGE"] = "5d"
    proc, results = _run_once(dirs, [_scan_job("vuln-env-0002")], env=env)
    error = results["vuln-env-0002"]["error"]
    assert error["code"] == "VULN_DB_STALE" and "past --vuln-db-max-age 5d 0h" in error["message"]


def test_no_database_fails_the_job_naming_the_flag(dirs):
    proc, results = _run_once(dirs, [_scan_job("vuln-none-0001")])
    assert proc.returncode == 1
    result = results["vuln-none-0001"]
    assert (result["status"], result["error"]["code"]) == ("failed", "VULN_DB_UNAVAILABLE")
    assert "--vuln-db is not set; set --vuln-db DIR" in result["error"]["message"]
    assert "\n" not in result["error"]["message"]


def test_stale_database_fails_the_job_with_its_age(dirs):
    db = _database(dirs.base, age=10 * 86400 + 7200)
    proc, results = _run_once(dirs, [_scan_job("vuln-stale-0001")], "--vuln-db", db)
    error = results["vuln-stale-0001"]["error"]
    assert error["code"] == "VULN_DB_STALE"
    assert " is 10d 2h old (newest record modified " in error["message"]
    assert ("past --vuln-db-max-age 7d 0h; refresh its all.zip files, or raise --vuln-db-max-age"
            in error["message"])
    proc, results = _run_once(dirs, [_scan_job("vuln-stale-0002")], "--vuln-db", db, "--vuln-db-max-age", "0")
    assert results["vuln-stale-0002"]["status"] == "completed"


def test_corrupt_database_fails_jobs_and_the_worker_lives_on(dirs):
    db = os.path.join(dirs.base, "osv")
    os.makedirs(os.path.join(db, "Debian"))
    with open(os.path.join(db, "Debian", "all.zip"), "wb") as fh:
        fh.write(b"PK\x03\x04" + os.urandom(4096))
    proc, results = _run_once(dirs, [_scan_job("vuln-bad-0001"), make_job("vuln-echo-0001")], "--vuln-db", db)
    assert results["vuln-bad-0001"]["error"]["code"] == "VULN_DB_UNAVAILABLE"
    message = results["vuln-bad-0001"]["error"]["message"]
    assert "holds no readable OSV record (0 records and 1 files skipped)" in message
    assert results["vuln-echo-0001"]["status"] == "completed"


def test_hostile_records_are_skipped_and_the_rest_scanned(dirs):
    db = _database(dirs.base, extra=[("HUGE.json", b" " * (9 * 1024 * 1024)), ("BAD.json", b"{\"id\": 3}"),
                                     ("x.json", b"\xff\x00")])
    proc, results = _run_once(dirs, [_scan_job("vuln-hostile-0001")], "--vuln-db", db)
    data = results["vuln-hostile-0001"]["data"]
    assert data["ids"] == ["DSA-1"] and data["database"]["skipped"] == 3


def test_vulndb_info_text_and_json(dirs):
    db = _database(dirs.base, age=2 * 86400 + 3 * 3600, extra=[("BAD.json", b"not json")])
    proc = cli("vulndb", "info", "--vuln-db", db)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"database: {db}"
    assert lines[1] == "records: 2 (withdrawn 0; skipped 1 records and 0 files)"
    assert lines[2].endswith("(age 2d 3h)") and lines[3] == "max age: 7d 0h"
    assert [line.split() for line in lines[5:8]] == [["ecosystem", "records"], ["Debian:11", "1"],
                                                     ["Debian:12", "1"]]
    assert lines[8].startswith("skipped: ") and "BAD.json: not a JSON record" in lines[8]
    proc = cli("vulndb", "info", "--json", env=worker_env(GUESTKIT_WORKER_VULN_DB=db))
    info = json.loads(proc.stdout)
    assert proc.returncode == 0 and info["by_ecosystem"] == {"Debian:11": 1, "Debian:12": 1}
    assert (info["records"], info["skipped"], info["stale"]) == (2, 1, False)
    assert info["age_seconds"] >= 2 * 86400 + 3 * 3600


def test_vulndb_info_exit_statuses(dirs):
    proc = cli("vulndb", "info", env=worker_env(GUESTKIT_WORKER_VULN_DB=None))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "guestkit-worker: VULN_DB_UNAVAILABLE: no vulnerability database: --vuln-db is not set; "
        "set --vuln-db DIR (or GUESTKIT_WORKER_VULN_DB) to a directory of OSV all.zip files"]
    assert cli("vulndb", "info", "--vuln-db", os.path.join(dirs.base, "nowhere")).returncode == 1
    db = _database(dirs.base, age=3 * 86400)
    proc = cli("vulndb", "info", "--vuln-db", db, "--vuln-db-max-age", "1d")
    assert proc.returncode == 3 and "STALE: scans fail with VULN_DB_STALE" in proc.stdout
    assert cli("vulndb", "info", "--vuln-db", db, "--vuln-db-max-age", "0").returncode == 0
    proc = cli("vulndb", "info", "--vuln-db", db, "--vuln-db-max-age", "soon")
    assert proc.returncode == 2 and "--vuln-db-max-age: expected a duration such as 7d" in proc.stderr
    env = worker_env(GUESTKIT_WORKER_VULN_DB=db, GUESTKIT_WORKER_VULN_DB_MAX_AGE="x")
    proc = cli("vulndb", "info", env=env)
    assert proc.returncode == 2 and "GUESTKIT_WORKER_VULN_DB_MAX_AGE: expected a duration" in proc.stderr
    assert cli("vulndb").returncode == 2


def test_metrics_of_a_daemon_and_one_index_shared_by_jobs(dirs):
    db = _database(dirs.base, age=2 * 86400)
    proc = start_worker(dirs, "--metrics-addr", "127.0.0.1:0", "--shutdown-timeout", "1", "--vuln-db", db)
    try:
        url = worker_url(proc)
        # indexed at start by the refresher: the gauges exist before any scan
        samples = wait_for(lambda: (lambda m: m if ("guestkit_vuln_db_age_seconds", frozenset()) in m
                                    else None)(parse(scrape(url))), what="the database age gauge")
        assert 2 * 86400 <= value(samples, "guestkit_vuln_db_age_seconds") < 2 * 86400 + 600
        assert series(samples, "guestkit_vuln_db_records") == {
            ("guestkit_vuln_db_records", frozenset({("ecosystem", "Debian:11")})): 1.0,
            ("guestkit_vuln_db_records", frozenset({("ecosystem", "Debian:12")})): 1.0}
        findings = series(samples, "guestkit_scan_findings_total")
        assert {dict(k[1])["severity"]: v for k, v in findings.items()} == {
            "critical": 0, "high": 0, "medium": 0, "low": 0, "unknown": 0}
        for n in (1, 2):
            write_job(dirs.jobs, _scan_job(f"vuln-metrics-000{n}", packages=(OPENSSL, OPENSSL)))
        wait_for(lambda: len(dirs.all_results()) == 2, what="two scan results")
        results = dirs.all_results()
        assert {r["status"] for r in results.values()} == {"completed"}
        assert len({r["data"]["indexed_at"] for r in results.values()}) == 1  # one index for both
        samples = wait_for(lambda: (lambda m: m if value(m, "guestkit_scans_total") == 2 else None)(
            parse(scrape(url))), what="two scans counted")
        assert value(samples, "guestkit_scan_findings_total", severity="critical") == 4
        assert value(samples, "guestkit_scan_findings_total", severity="high") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_without_a_database_the_age_is_absent_not_zero():
    from prometheus_client import CollectorRegistry, generate_latest

    from guestkit_worker.metrics.live import ScanTotals
    from guestkit_worker.runtime.vulnwatch import scan_snapshot
    from guestkit_worker.vulns.stats import ScanStats
    registry = CollectorRegistry()
    ScanTotals(registry).track(lambda: dict(scan_snapshot(), age_seconds=None, records={},
                                            findings=ScanStats().snapshot()["findings"]))
    samples = parse(generate_latest(registry).decode())
    assert not series(samples, "guestkit_vuln_db_age_seconds")  # 0 would read as a fresh database
    assert not series(samples, "guestkit_vuln_db_records")
    assert len(series(samples, "guestkit_scan_findings_total")) == 5


def test_records_gauge_has_bounded_series():
    """A database naming 500 ecosystems exports 32 of them and "other", never 500 series."""
    from prometheus_client import CollectorRegistry, generate_latest

    from guestkit_worker.metrics.live import MAX_ECOSYSTEM_SERIES, ScanTotals
    registry = CollectorRegistry()
    records = {f"Eco:{i}": 1000 - i for i in range(500)}
    ScanTotals(registry).track(lambda: {"age_seconds": 5.0, "records": records, "findings": {}, "scans": 0})
    samples = series(parse(generate_latest(registry).decode()), "guestkit_vuln_db_records")
    values = {dict(k[1])["ecosystem"]: v for k, v in samples.items()}
    assert len(values) == MAX_ECOSYSTEM_SERIES + 1 == 33
    assert values["Eco:0"] == 1000 and "Eco:40" not in values
    assert values["other"] == sum(1000 - i for i in range(32, 500))
