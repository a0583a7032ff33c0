"""Logs worth reading (text and JSON, control characters escaped) and signals that never end
the worker by surprise (SIGHUP) or silently (SIGTERM on an idle daemon)."""

import io
import json
import logging
import os
import re
import signal

import pytest
from conftest import cli, make_job, start_worker, wait_for, write_job

from guestkit_worker.cli.logsetup import JsonFormatter, TextFormatter, escape_controls, setup

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[")
FORGED = ("\n2026-01-01 00:00:00,000 INFO [MainThread] guestkit_worker.runtime.worker: "
          "job forged-0001: completed")


def test_escape_controls_leaves_no_line_break_or_escape_sequence():
    text = escape_controls("a\nb\rc\td\x1b[31me\x00f\x7fg\x85h\u2028i")
    assert text == "a\\nb\\rc\\td\\x1b[31me\\x00f\\x7fg\\x85h\\u2028i"
    assert escape_controls("plain /srv/vms/web-01.qcow2 ü") == "plain /srv/vms/web-01.qcow2 ü"


def _record(msg, *args, exc_info=None):
    return logging.LogRecord("guestkit_worker.runtime.worker", logging.WARNING, __file__, 1, msg, args,
                             exc_info)


def test_formatters_keep_a_forged_line_inside_its_record():
    try:
        raise RuntimeError("boom" + FORGED)
    except RuntimeError:
        import sys
        exc = sys.exc_info()
    rec = _record("job %s: image %s refused", "web-01", "/srv/x" + FORGED, exc_info=exc)
    text = TextFormatter().format(rec)
    lines = text.splitlines()
    assert RECORD.match(lines[0]) and "/srv/x\\n2026-01-01" in lines[0]
    assert all(line.startswith("    ") for line in lines[1:]) and len(lines) > 2  # the traceback, indented
    doc = json.loads(JsonFormatter("w-1").format(rec))
    assert "\n" not in JsonFormatter("w-1").format(rec)
    assert doc["job_id"] == "web-01" and doc["worker_id"] == "w-1" and doc["level"] == "WARNING"
    assert doc["event"] == "image_refused" and doc["message"].endswith("refused")
    assert "\\n2026-01-01" in doc["message"] and "RuntimeError: boom" in doc["exception"]


def test_setup_replaces_handlers_and_sets_the_level():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup("WARNING", "json", worker_id="w-2", stream=stream)
        logging.getLogger("guestkit_worker.x").info("hidden")
        logging.getLogger("guestkit_worker.x").warning("job %s: shown", "j-1", extra={"event": "custom"})
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["event"] == "custom" and json.loads(line)["job_id"] == "j-1"


@pytest.mark.integration
def test_json_log_lines_of_a_real_run(dirs):
    write_job(dirs.jobs, make_job("json-log-0001"))
    write_job(dirs.jobs, make_job("json-log-0002", "test.raise", {"message": "kaput" + FORGED}))
    proc = cli("--once", "--log-format", "json", "--worker-id", "json-w1", "--metrics-enabled", "false",
               *dirs.args(), check=1)
    docs = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "thread", "worker_id", "job_id", "event", "message"} <= set(d)
               for d in docs)
    assert all(d["worker_id"] == "json-w1" for d in docs)
    done = [d for d in docs if d["event"] == "job_completed"]
    assert [d["job_id"] for d in done] == ["json-log-0001"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", done[0]["time"])
    raised = [d for d in docs if d["job_id"] == "json-log-0002" and "exception" in d]
    assert raised and "\\n2026-01-01" not in raised[0]["exception"]  # JSON escapes the newline itself
    print(json.dumps(done[0]))  # shown with -s: the captured line quoted in the closing note


@pytest.mark.integration
def test_text_logs_cannot_be_forged_by_a_job(dirs):
    write_job(dirs.jobs, make_job("forge-log-001", "test.raise", {"message": "kaput" + FORGED}))
    write_job(dirs.jobs, make_job("forge-log-002", "guestkit.convert", {
        "image": {"path": "/nonexistent/x.raw" + FORGED, "format": "raw"}, "target_format": "qcow2"}))
    proc = cli("--once", "--metrics-enabled", "false", *dirs.args(), check=1)
    lines = proc.stderr.splitlines()
    assert "kaput" in proc.stderr
    for line in lines:
        assert RECORD.match(line) or line.startswith("    "), line
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)


def _sigterm(proc):
    """SIGTERM a daemon and return its stderr (SIGKILL if it has not exited in 30 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_sigterm_during_start_up_stops_cleanly(dirs):
    # the handlers are installed before start-up's work (recovery, binding): a SIGTERM then is a
    # clean, logged stop (not a kill by the default action: status -15, nothing logged)
    proc = start_worker(dirs, "--metrics-enabled", "false")
    try:
        for line in proc.stderr:
            if "loaded handler" in line or "created" in line or "serving" in line:
                break
    finally:
        err = _sigterm(proc)
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and "stopped" in err


@pytest.mark.integration
def test_sighup_is_logged_and_never_fatal(dirs):
    write_job(dirs.jobs, make_job("hup-sleep-0001", "test.sleep", {"seconds": 2}))
    proc = start_worker(dirs, "--metrics-enabled", "false")
    try:
        wait_for(lambda: dirs.running(), what="job running")
        for _ in range(3):
            proc.send_signal(signal.SIGHUP)
        wait_for(lambda: os.path.exists(os.path.join(dirs.results, "hup-sleep-0001-result.json")), timeout=30,
                 what="job done after SIGHUP")
        assert proc.poll() is None  # still running
    finally:
        err = _sigterm(proc)
    assert proc.returncode == 0
    # no token file, no certificate: nothing to read again (signals sent back to back may coalesce)
    assert err.count("SIGHUP received: nothing to reload") >= 1
    assert dirs.result("hup-sleep-0001")["status"] == "completed"


@pytest.mark.integration
def test_sigterm_on_an_idle_daemon_is_logged(dirs):
    proc = start_worker(dirs, "--metrics-addr", "127.0.0.1:0")
    try:
        first = []
        for line in proc.stderr:  # started: its main loop runs
            first.append(line)
            if " at once" in line:
                break
    finally:
        err = "".join(first) + _sigterm(proc)
    assert proc.returncode == 0
    assert "SIGTERM received: stopping" in err
    assert len(re.findall(r"serving (/)?metrics", err)) == 1, err  # said once


def test_progress_inside_a_phase_is_logged_at_info_at_most_every_10_percent_and_30_s(tmp_path, caplog):
    from guestkit_worker.job.protocol import validate_document
    from guestkit_worker.metrics.families import NullMetrics
    from guestkit_worker.runtime.context import HandlerContext
    events = []
    ctx = HandlerContext(validate_document(make_job("progress-log-01")), worker_id="w",
                         work_dir=str(tmp_path), metrics=NullMetrics(),
                         progress_sink=lambda job_id, event: events.append(event))
    clock = [1000.0]
    ctx._clock = lambda: clock[0]
    caplog.set_level(logging.DEBUG, logger="guestkit_worker.runtime.context")
    ctx.progress("validation", 0, "checking")
    for pct in range(0, 101):  # qemu-img -p: one line per percent, 1 s apart
        ctx.progress("convert", pct, f"qemu-img convert {pct}%")
        clock[0] += 1.0
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == ["job progress-log-01: [validation] 0% checking",
                    "job progress-log-01: [convert] 0% qemu-img convert 0%",
                    "job progress-log-01: [convert] 30% qemu-img convert 30%",
                    "job progress-log-01: [convert] 60% qemu-img convert 60%",
                    "job progress-log-01: [convert] 90% qemu-img convert 90%",
                    "job progress-log-01: [convert] 100% qemu-img convert 100%"]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 102 - 6
    assert len(events) == 102  # the progress store gets every event
