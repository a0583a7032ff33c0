"""Tests of the guestkit.convert handler with the real qemu-img (and one fake for a hang)."""

import json
import os
import shutil
import stat
import subprocess
import threading

import pytest
from conftest import allowed_roots
from diskimage import require_tool
from fixtures_disk import make_context

from guestkit_worker.handlers import convert as convert_mod
from guestkit_worker.handlers.convert import ConvertHandler
from guestkit_worker.job.errors import EngineUnavailable, HandlerError, JobCancelled, JobValidationError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(autouse=True)
def _qemu_img():
    require_tool("qemu-img")


def run_job(tmp_path, data, job_id="test-convert-0001"):
    ctx, metrics = make_context(tmp_path, job_id=job_id)
    handler = ConvertHandler()
    handler.configure_paths(allowed_roots())
    handler.validate(data)
    try:
        return handler.execute(ctx, data), ctx, metrics
    finally:
        handler.cleanup(ctx)


def progress_events(ctx):
    return list(ctx._progress_sink.events)


def qemu_compare(a, fa, b, fb):
    return subprocess.run(["qemu-img", "compare", "-f", fa, "-F", fb, a, b],
                          capture_output=True, text=True)


@pytest.mark.parametrize("data, field, words", [
    ({"image": {"format": "raw"}, "target_format": "qcow2"}, "payload.data.image.path", "non-empty"),
    ({"image": {"format": "iso"}, "target_format": "qcow2"}, "payload.data.image.format", "known"),
    ({"image": {"format": "raw"}}, "payload.data.target_format", "required"),
    ({"image": {"format": "raw"}, "target_format": "qed"}, "payload.data.target_format", "known"),
    ({"image": {"format": "raw"}, "target_format": "vmdk", "compression": True},
     "payload.data.compression", "only supported for qcow2"),
    ({"image": {"format": "raw"}, "target_format": "qcow2", "compression": "yes"},
     "payload.data.compression", "true or false"),
    ({"image": {"format": "raw"}, "target_format": "qcow2", "output": {"overwrite": 1}},
     "payload.data.output.overwrite", "true or false"),
])
def test_validation_errors(data, field, words):
    with pytest.raises(JobValidationError) as exc:
        ConvertHandler().validate(data)
    assert exc.value.field == field and words in exc.value.reason


def test_missing_source_rejected(tmp_path):
    handler = ConvertHandler()
    handler.configure_paths([str(tmp_path)])
    with pytest.raises(JobValidationError) as exc:
        handler.validate({"image": {"path": str(tmp_path / "nope.qcow2")}, "target_format": "raw"})
    assert exc.value.field == "payload.data.image.path" and "does not exist" in exc.value.reason


def test_allow_path_refuses_before_looking_at_the_path(tmp_path):
    """With a path policy, validate() refuses a path outside before anything stats it: the
    same code and words for an existing file, a directory and nothing at all; a symbolic link
    inside that leads out and an output onto the worker's own files are refused too."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    image = allowed / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    (allowed / "out-link").symlink_to("/etc")
    handler = ConvertHandler()
    handler.configure_paths([str(allowed)], protected=[str(tmp_path / "results")])

    def refusal(data):
        with pytest.raises(JobValidationError) as exc:
            handler.validate(data)
        assert exc.value.code == "PATH_NOT_ALLOWED"
        return exc.value.field, exc.value.reason

    for path in ("/etc/passwd", "/etc", "/no-such-dir-c0ffee/disk.raw"):
        assert refusal({"image": {"path": path, "format": "raw"}, "target_format": "qcow2"}) == (
            "payload.data.image.path", f"{path} is outside the allowed directories ({allowed})")
        assert refusal({"image": {"path": str(image), "format": "raw"}, "target_format": "qcow2",
                        "output": {"destination": path}}) == (
            "payload.data.output.destination", f"{path} is outside the allowed directories ({allowed})")
    linked = str(allowed / "out-link" / "x.qcow2")
    assert refusal({"image": {"path": str(image), "format": "raw"}, "target_format": "qcow2",
                    "output": {"destination": linked}})[1] == (
        f"{linked} leads outside the allowed directories ({allowed}) through a symbolic link")
    handler.configure_paths(["/"], protected=[str(allowed)])  # everything allowed: own dirs still off limits
    assert "inside the worker's own directory" in refusal(
        {"image": {"path": str(image), "format": "raw"}, "target_format": "qcow2",
         "output": {"destination": str(allowed / "o.qcow2")}})[1]
    handler.configure_paths([str(allowed)])
    handler.validate({"image": {"path": str(image), "format": "raw"}, "target_format": "qcow2",
                      "output": {"destination": str(allowed / "o.qcow2")}})  # inside: fine
    with pytest.raises(JobValidationError) as exc:  # inside but missing: the usual error
        handler.validate({"image": {"path": str(allowed / "nope.raw"), "format": "raw"},
                          "target_format": "qcow2"})
    assert exc.value.code == "INVALID_JOB" and "does not exist" in exc.value.reason


def test_no_allow_path_refuses_every_path(tmp_path):
    """Secure by default: without a policy an existing image is refused, naming the flag."""
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 4096)
    handler = ConvertHandler()
    for allowed in (None, []):
        handler.configure_paths(allowed)
        with pytest.raises(JobValidationError) as exc:
            handler.validate({"image": {"path": str(image), "format": "raw"}, "target_format": "qcow2"})
        assert exc.value.code == "PATH_NOT_ALLOWED" and exc.value.field == "payload.data.image.path"
        assert "no --allow-path is set" in exc.value.reason and "--allow-path /" in exc.value.reason


def test_round_trip_raw_qcow2_raw(tmp_path, debian_image):
    raw = debian_image["raw"]
    q = tmp_path / "rt.qcow2"
    res1, ctx1, m1 = run_job(tmp_path, {"image": {"path": raw, "format": "raw"}, "target_format": "qcow2",
                                        "compression": True, "output": {"destination": str(q)}})
    assert res1.output == str(q)
    d = res1.data
    assert (d["target_format"], d["compression"], d["virtual_size"]) == (
        "qcow2", True, debian_image["raw_size"])
    assert 0 < d["actual_size"] < debian_image["raw_size"]
    assert m1.write_bytes > 0 and m1.write_bytes == d["write_bytes"] == ctx1.disk_write_bytes
    assert m1.read_bytes > 0
    events = progress_events(ctx1)
    assert [e for e in events if e["phase"] == "convert" and e.get("progress_percent") == 100.0]
    assert [e["phase"] for e in events][-1] == "export"

    back = tmp_path / "rt.raw"
    res2, _, m2 = run_job(tmp_path, {"image": {"path": str(q), "format": "qcow2"}, "target_format": "raw",
                                     "output": {"destination": str(back)}}, job_id="test-convert-0002")
    assert res2.data["virtual_size"] == debian_image["raw_size"] == os.path.getsize(back)
    assert m2.write_bytes > 0 and m2.read_bytes > 0
    cmp = qemu_compare(raw, "raw", str(back), "raw")
    assert cmp.returncode == 0 and "Images are identical" in cmp.stdout
    assert qemu_compare(raw, "raw", str(q), "qcow2").returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["rt.qcow2", "rt.raw"]


def test_default_destination_in_work_dir(tmp_path, debian_image):
    res, _, _ = run_job(tmp_path, {"image": {"path": debian_image["qcow2"]}, "target_format": "vmdk"})
    assert res.output == os.path.join(os.path.realpath(tmp_path), "test-convert-0001.vmdk")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vmdk", res.output],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "vmdk" and info["virtual-size"] == debian_image["raw_size"]


def test_existing_destination_refused_and_untouched(tmp_path, debian_image):
    dest = tmp_path / "exists.qcow2"
    dest.write_bytes(b"precious")
    ctx, metrics = make_context(tmp_path)
    with pytest.raises(HandlerError) as exc:
        ConvertHandler().execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"},
                                       "target_format": "qcow2", "output": {"destination": str(dest)}})
    assert exc.value.code == "OUTPUT_EXISTS"
    assert dest.read_bytes() == b"precious"
    assert metrics.write_bytes == 0 and metrics.read_bytes == 0


def test_overwrite_replaces(tmp_path, debian_image):
    dest = tmp_path / "exists.qcow2"
    dest.write_bytes(b"old")
    res, _, _ = run_job(tmp_path, {"image": {"path": debian_image["raw"], "format": "raw"},
                                   "target_format": "qcow2",
                                   "output": {"destination": str(dest), "overwrite": True}})
    assert res.output == str(dest) and dest.read_bytes()[:4] == b"QFI\xfb"


def test_destination_is_source_refused(tmp_path, debian_image):
    ctx, _ = make_context(tmp_path)
    with pytest.raises(HandlerError) as exc:
        ConvertHandler().execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"},
                                       "target_format": "raw",
                                       "output": {"destination": debian_image["raw"], "overwrite": True}})
    assert exc.value.code == "OUTPUT_EXISTS" and "is the source" in exc.value.message


def test_wrong_source_format_fails_without_partial(tmp_path, debian_image):
    dest = tmp_path / "out.raw"
    ctx, metrics = make_context(tmp_path)
    handler = ConvertHandler()
    with pytest.raises(HandlerError) as exc:
        try:
            handler.execute(ctx, {"image": {"path": debian_image["raw"], "format": "qcow2"},
                                  "target_format": "raw", "output": {"destination": str(dest)}})
        finally:
            handler.cleanup(ctx)
    # the chain check reads the header first: a raw image is not a valid qcow2
    assert exc.value.code == "INVALID_IMAGE" and "not a valid qcow2 image" in exc.value.message
    assert os.listdir(tmp_path) == []  # nothing left behind
    assert metrics.write_bytes == 0


def test_qemu_img_missing(tmp_path, debian_image, monkeypatch):
    monkeypatch.setattr(convert_mod, "QEMU_IMG", "qemu-img-not-installed")
    handler = ConvertHandler()
    ok, detail = handler.engine_status()
    assert not ok and "qemu-utils" in detail
    ctx, _ = make_context(tmp_path)
    with pytest.raises(EngineUnavailable) as exc:
        handler.execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"},
                              "target_format": "qcow2"})
    assert exc.value.code == "ENGINE_UNAVAILABLE" and "qemu-utils" in exc.value.message


def test_timeout_kills_qemu_img_and_removes_partial(tmp_path, debian_image, monkeypatch):
    fake = tmp_path / "bin" / "qemu-img"
    fake.parent.mkdir()
    # writes part of its output, reports progress, then hangs like a stuck conversion
    fake.write_text("#!/bin/sh\nfor last; do :; done\nhead -c 1048576 /dev/zero > \"$last\"\n"
                    "printf '    (10.00/100%%)\\r'\nexec sleep 300\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(convert_mod, "QEMU_IMG", str(fake))
    dest = tmp_path / "out" / "never.qcow2"
    dest.parent.mkdir()
    ctx, metrics = make_context(tmp_path, job_id="test-convert-timeout")
    handler = ConvertHandler()
    timer = threading.Timer(1.0, ctx.cancel, args=("timeout",))
    timer.start()
    try:
        with pytest.raises(JobCancelled) as exc:
            handler.execute(ctx, {"image": {"path": debian_image["raw"], "format": "raw"},
                                  "target_format": "qcow2", "output": {"destination": str(dest)}})
    finally:
        timer.cancel()
        handler.cleanup(ctx)
    assert exc.value.code == "TIMEOUT"
    assert os.listdir(dest.parent) == []  # the partial output is gone
    assert metrics.write_bytes == 0
    assert any(e["phase"] == "convert" and e.get("progress_percent") == 10.0 for e in progress_events(ctx))
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    assert str(dest.parent).encode() not in fh.read()
            except OSError:
                pass


def test_progress_is_throttled_and_its_number_is_its_message(tmp_path, monkeypatch):
    """qemu-img prints about 100 progress lines even for a 0.2 s conversion, with fractions
    (13.50): the job gets one event per 5 % (or per second when slower) and the end, each with
    the whole percent its message shows."""
    real = shutil.which("qemu-img")  # there: the module's fixture requires it
    fake = tmp_path / "bin" / "qemu-img"
    fake.parent.mkdir()
    steps = " ".join(f"{i * 1.5:.2f}" for i in range(67)) + " 100.00"
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = convert ]; then\n  for p in {steps}; do "
                    "printf '    (%s/100%%)\\r' \"$p\"; done\nfi\nexec " + real + " \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(convert_mod, "QEMU_IMG", str(fake))
    src = tmp_path / "small.raw"
    subprocess.run([real, "create", "-q", "-f", "raw", str(src), "8M"], check=True)
    _, ctx, _ = run_job(tmp_path, {"image": {"path": str(src), "format": "raw"}, "target_format": "qcow2",
                                   "output": {"destination": str(tmp_path / "small.qcow2")}})
    steps = [e for e in progress_events(ctx) if e["phase"] == "convert" and "%" in e["message"]]
    assert 2 <= len(steps) <= 22, [e["message"] for e in steps]
    for e in steps:
        assert e["message"] == f"qemu-img convert {e['progress_percent']:.0f}%" and \
            e["progress_percent"] == int(e["progress_percent"]), e
    assert steps[-1]["progress_percent"] == 100.0
