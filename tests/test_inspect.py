"""Tests of the guestkit.inspect handler.

One test here launches a real libguestfs appliance (a 2 s timeout, stopped early); the full raw
and qcow2 inspections run through the whole worker in test_engines_e2e.py.  Everything else
runs without an appliance.
"""

import copy
import glob
import json
import os
import stat
import threading
import time

import pytest
from conftest import UPSTREAM_JOBS
from diskimage import require_tool
from fixtures_disk import make_context

from guestkit_worker.engines import libguestfs as engine_mod
from guestkit_worker.handlers.inspect import InspectHandler
from guestkit_worker.handlers.inspect_report import SAMPLE_LIMIT, SECTIONS, effective_sections, summarize
from guestkit_worker.job.errors import EngineUnavailable, HandlerError, JobCancelled, JobValidationError
from guestkit_worker.system.checksum import sha256_file

pytestmark = pytest.mark.timeout(300)

EXAMPLES = UPSTREAM_JOBS


def example(name):
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as fh:
        return json.load(fh)


def sha256_of(path):
    return sha256_file(path)


def record_runs(ctx):
    """Wrap ctx.run so the test can tell whether a child process (the probe) was started."""
    calls = []
    orig = ctx.run

    def run(argv, **kw):
        calls.append(list(argv))
        return orig(argv, **kw)

    ctx.run = run
    return calls


def job_processes(*needles):
    """(pid, cmdline) of live processes whose command line contains any needle."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{name}/stat", "rb") as fh:
                st = fh.read()
        except OSError:
            continue
        if st[st.rfind(b")") + 2:st.rfind(b")") + 3] in (b"Z", b"X"):
            continue
        if any(n in cmd for n in needles):
            found.append((int(name), cmd))
    return found


def fake_guestfs_python(tmp_path, probe_output, rc=0):
    """A stand-in 'python' that claims to have guestfs and prints probe_output as the probe."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\nif [ \"$1\" = \"-c\" ]; then echo 1.48.6; exit 0; fi\n"
                      f"cat <<'EOF'\n{probe_output}\nEOF\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.fixture
def fresh_engine_cache(monkeypatch):
    monkeypatch.setattr(engine_mod, "_engine_cache", {})


# -- validation -------------------------------------------------------------------------------
def _allowing_all():
    """A handler run with --allow-path / (these tests are about other checks)."""
    handler = InspectHandler()
    handler.configure_paths(["/"])
    return handler


def test_example_full_job_fails_validation_on_missing_image():
    data = example("guestkit-inspect-full.json")["payload"]["data"]
    with pytest.raises(JobValidationError) as exc:
        _allowing_all().validate(data)
    assert exc.value.field == "payload.data.image.path"
    assert "/mnt/vms/prod-web-01.qcow2 does not exist" in exc.value.reason


@pytest.mark.integration
def test_example_jobs_validate_with_a_real_image(debian_image):
    for name in ("guestkit-inspect-basic.json", "guestkit-inspect-full.json"):
        data = copy.deepcopy(example(name)["payload"]["data"])
        data["image"]["path"] = debian_image["qcow2"]
        _allowing_all().validate(data)


@pytest.mark.integration
@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d.pop("image"), "payload.data.image", "required"),
    (lambda d: d["image"].update(format="iso"), "payload.data.image.format", "known: raw, qcow2"),
    (lambda d: d["image"].pop("format"), "payload.data.image.format", "required"),
    (lambda d: d["image"].update(checksum="md5:d41d8cd98f00b204e9800998ecf8427e"),
     "payload.data.image.checksum", "supported: sha256"),
    (lambda d: d["image"].update(checksum="sha256:1234"), "payload.data.image.checksum", "64 hexadecimal"),
    (lambda d: d["image"].update(path="/nonexistent/disk.raw"), "payload.data.image.path", "does not exist"),
    (lambda d: d["image"].update(path="/"), "payload.data.image.path", "not a regular file"),
    (lambda d: d.update(options={"include_users": "yes"}), "payload.data.options.include_users",
     "true or false"),
    (lambda d: d.update(output={"format": "yaml"}), "payload.data.output.format", "json"),
    (lambda d: d.update(output={"destination": ""}), "payload.data.output.destination", "non-empty"),
])
def test_validation_errors(debian_image, mutate, field, words):
    data = {"image": {"path": debian_image["raw"], "format": "raw"}}
    mutate(data)
    with pytest.raises(JobValidationError) as exc:
        _allowing_all().validate(data)
    assert exc.value.field == field
    assert words in exc.value.reason


def test_allow_path_refuses_before_looking_at_the_image(tmp_path):
    """An existing file, a directory and a missing path outside --allow-path: one reason."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    handler = InspectHandler()
    handler.configure_paths([str(allowed)])
    reasons = set()
    for path in ("/etc/shadow", "/etc", "/no-such-dir-c0ffee/disk.raw"):
        with pytest.raises(JobValidationError) as exc:
            handler.validate({"image": {"path": path, "format": "raw"}})
        assert (exc.value.code, exc.value.field) == ("PATH_NOT_ALLOWED", "payload.data.image.path")
        reasons.add(exc.value.reason.replace(path, "PATH"))
    assert reasons == {f"PATH is outside the allowed directories ({allowed})"}


def test_effective_sections():
    assert effective_sections(None) == set(SECTIONS)
    basic = example("guestkit-inspect-basic.json")["payload"]["data"]["options"]
    assert effective_sections(basic) == set(SECTIONS)  # four true, the others not mentioned
    assert effective_sections({}) == set(SECTIONS)
    assert effective_sections({"include_users": False, "include_databases": False}) == \
        set(SECTIONS) - {"users", "databases"}


def test_summary_caps_lists():
    report = {"operating_system": {"type": "linux"},
              "packages": {"count": 100, "manager": "apt",
                           "packages": [{"name": f"p{i}", "version": "1"} for i in range(100)]},
              "services": {"count": 30, "enabled": [{"name": f"u{i}.service"} for i in range(30)]}}
    s = summarize(report)
    assert s["packages"]["count"] == 100 and len(s["packages"]["sample"]) == SAMPLE_LIMIT
    assert s["packages"]["truncated"] is True
    assert len(s["services"]["enabled"]) == SAMPLE_LIMIT


# -- failures before any appliance ------------------------------------------------------------
@pytest.mark.integration
def test_probe_finds_its_sections_module_however_it_is_run(tmp_path):
    """The probe is a file run by the system python: it imports guestfs_sections.py from its
    own directory even from another working directory with PYTHONSAFEPATH set (which keeps
    the script's directory off sys.path)."""
    import subprocess

    from guestkit_worker.engines import probe_script
    require_tool("guestfs")
    env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONPATH="")
    proc = subprocess.run([engine_mod.guestfs_python(), probe_script(),
                           "--image", str(tmp_path / "none.raw"),
                           "--format", "raw", "--sections", "users"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "IMAGE_OPEN_FAILED"


@pytest.mark.integration
def test_engine_unavailable(tmp_path, debian_image, monkeypatch, fresh_engine_cache):
    monkeypatch.setenv("GUESTKIT_WORKER_GUESTFS_PYTHON", str(tmp_path / "no-such-python"))
    handler = InspectHandler()
    ok, detail = handler.engine_status()
    assert not ok and "python3-guestfs" in detail
    ctx, metrics = make_context(tmp_path)
    calls = record_runs(ctx)
    with pytest.raises(EngineUnavailable) as exc:
        handler.execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"}})
    assert exc.value.code == "ENGINE_UNAVAILABLE"
    assert "python3-guestfs" in exc.value.message and "linux-image-amd64" in exc.value.message
    assert calls == [] and metrics.checksums == []


@pytest.mark.integration
def test_engine_status_is_cached(monkeypatch, fresh_engine_cache):
    require_tool("guestfs")
    ok, detail = InspectHandler().engine_status()
    assert ok, detail
    assert "libguestfs 1." in detail
    monkeypatch.setattr(engine_mod, "_probe_engine", lambda python: pytest.fail("not cached"))
    assert InspectHandler().engine_status() == (ok, detail)


@pytest.mark.integration
def test_checksum_mismatch_fails_before_launch(tmp_path, debian_image, guestfs_env, fresh_engine_cache):
    ctx, metrics = make_context(tmp_path)
    calls = record_runs(ctx)
    wrong = "sha256:" + "0" * 64
    dest = tmp_path / "report.json"
    with pytest.raises(HandlerError) as exc:
        InspectHandler().execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw",
                                                 "checksum": wrong},
                                       "output": {"destination": str(dest)}})
    err = exc.value
    assert err.code == "CHECKSUM_MISMATCH"
    assert err.details["expected"] == "0" * 64
    assert err.details["actual"] == sha256_of(debian_image["raw"])
    assert metrics.checksums == ["failure"]
    assert calls == []  # the probe (and so the appliance) never started
    assert not dest.exists()


@pytest.mark.integration
def test_existing_output_refused_before_launch(tmp_path, debian_image, guestfs_env, fresh_engine_cache):
    dest = tmp_path / "report.json"
    dest.write_text("keep me")
    ctx, _ = make_context(tmp_path)
    calls = record_runs(ctx)
    with pytest.raises(HandlerError) as exc:
        InspectHandler().execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"},
                                       "output": {"destination": str(dest)}})
    assert exc.value.code == "OUTPUT_EXISTS"
    assert dest.read_text() == "keep me" and calls == []


@pytest.mark.integration
def test_path_outside_allowed_dirs(tmp_path, debian_image, guestfs_env):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    ctx, _ = make_context(tmp_path, allowed_paths=[str(allowed)])
    with pytest.raises(HandlerError) as exc:
        InspectHandler().execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"}})
    assert exc.value.code == "PATH_NOT_ALLOWED" and "payload.data.image.path" in exc.value.message


@pytest.mark.integration
def test_no_operating_system_error_is_mapped(tmp_path, debian_image, monkeypatch, fresh_engine_cache):
    doc = {"error": {"code": "NO_OPERATING_SYSTEM", "message": "no operating system found in x",
                     "filesystems": []}}
    monkeypatch.setenv("GUESTKIT_WORKER_GUESTFS_PYTHON", fake_guestfs_python(tmp_path, json.dumps(doc)))
    ctx, metrics = make_context(tmp_path)
    handler = InspectHandler()
    with pytest.raises(HandlerError) as exc:
        try:
            handler.execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"}})
        finally:
            handler.cleanup(ctx)
    assert exc.value.code == "NO_OPERATING_SYSTEM"
    assert metrics.checksums == ["skipped"]
    assert not os.path.exists(os.path.join(str(tmp_path), "test-job-0001-inspection.json"))
    assert not [n for n in os.listdir(tmp_path) if ".guestfs-" in n]


@pytest.mark.integration
def test_probe_crash_is_inspection_failed(tmp_path, debian_image, monkeypatch, fresh_engine_cache):
    monkeypatch.setenv("GUESTKIT_WORKER_GUESTFS_PYTHON",
                       fake_guestfs_python(tmp_path, "Traceback: boom", rc=1))
    ctx, _ = make_context(tmp_path)
    with pytest.raises(HandlerError) as exc:
        InspectHandler().execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"}})
    assert exc.value.code == "INSPECTION_FAILED" and "status 1" in exc.value.message


# -- real appliance launches (3) --------------------------------------------------------------
def _progress_phases(ctx):
    return [event["phase"] for event in ctx._progress_sink.events]


@pytest.mark.integration
def test_inspect_timeout_leaves_no_processes(tmp_path, debian_image, guestfs_env):
    job_id = "test-inspect-timeout"
    ctx, _ = make_context(tmp_path, job_id=job_id)
    needles = (debian_image["raw"], f".{job_id}.guestfs-")
    seen_at_cancel = []
    sockdirs_before = set(glob.glob("/tmp/libguestfs*"))

    def fire():
        seen_at_cancel.extend(job_processes(*needles))
        ctx.cancel("timeout")

    timer = threading.Timer(2.0, fire)
    handler = InspectHandler()
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(JobCancelled) as exc:
            handler.execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"}})
    finally:
        timer.cancel()
        handler.cleanup(ctx)
    elapsed = time.monotonic() - started
    assert exc.value.code == "TIMEOUT"
    assert elapsed < 15, elapsed  # stopped long before the appliance would have finished
    assert any("guestfs_probe.py" in cmd for _, cmd in seen_at_cancel), seen_at_cancel
    deadline = time.monotonic() + 5
    while job_processes(*needles) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_processes(*needles) == []
    assert not any("qemu" in cmd and job_id in cmd for _, cmd in job_processes("qemu"))
    assert not [n for n in os.listdir(tmp_path) if ".guestfs-" in n or n.endswith(".json")]
    assert set(glob.glob("/tmp/libguestfs*")) <= sockdirs_before  # socket directory removed too


@pytest.mark.integration
def test_declared_format_is_used_not_probed(tmp_path, debian_image, guestfs_env):
    """A raw image declared as qcow2 is read as qcow2 and fails (its header is checked before
    any appliance boots)."""
    ctx, metrics = make_context(tmp_path, job_id="test-inspect-badfmt")
    handler = InspectHandler()
    try:
        with pytest.raises(HandlerError) as exc:
            handler.execute(ctx, {"image": {"path": debian_image["raw"], "format": "qcow2"}})
    finally:
        handler.cleanup(ctx)
    assert exc.value.code == "INVALID_IMAGE"
    assert "is image.format right?" in exc.value.message and "not a valid qcow2" in exc.value.message
    assert not [n for n in os.listdir(tmp_path) if ".guestfs-" in n or n.endswith(".json")]
