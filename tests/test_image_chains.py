"""Image chains: an image in an allowed directory cannot make qemu or libguestfs open files
outside it (backing files, external data files, VMDK extents, json:/protocol names), and what
was checked is what the engine opens."""

import json
import os
import socket
import subprocess
import threading

import pytest
from conftest import allowed_roots, cli, make_job, require_tool, write_job
from fixtures_disk import make_context

pytestmark = pytest.mark.integration

SECRET = b"TOP-SECRET-shadow-line:$6$salt$hash\n"
CODE = "BACKING_FILE_NOT_ALLOWED"


@pytest.fixture(autouse=True)
def _qemu_img():
    require_tool("qemu-img")


def qemu_img(*args):
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def _layout(base):
    """allowed/ (the jobs' directory) and outside/secret (1 MiB raw starting with SECRET)."""
    allowed = os.path.join(base, "allowed")
    outside = os.path.join(base, "outside")
    os.makedirs(allowed)
    os.makedirs(outside)
    secret = os.path.join(outside, "secret")
    with open(secret, "wb") as fh:
        fh.write(SECRET)
        fh.truncate(1 << 20)
    return allowed, secret


def _qcow2_backed_by(path, backing, fmt="raw"):
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, path, "1M")
    return path


def _convert_job(job_id, image, fmt, dest):
    return make_job(job_id, "guestkit.convert", {"image": {"path": image, "format": fmt},
                                                 "target_format": "raw", "output": {"destination": dest}},
                    execution={"timeout_seconds": 60})


class _Listener:
    """A TCP port that counts the connections it gets (an attacker's http/nbd server)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_images_that_reference_other_files_are_refused(dirs):
    """Images whose backing file, data file or extent is outside the allowed directory (a path,
    a json: name, an http or nbd URL) fail with a message naming --allow-backing-files: no
    output, no byte of /etc/shadow's stand-in in any file, no connection to the attacker's
    port."""
    allowed, secret = _layout(dirs.base)
    listener = _Listener()
    try:
        hostile = {
            "abs-backing-001": (_qcow2_backed_by(os.path.join(allowed, "abs.qcow2"), secret), "qcow2"),
            "json-backing-01": (_qcow2_backed_by(os.path.join(allowed, "json.qcow2"), "json:" + json.dumps(
                {"driver": "raw", "file": {"driver": "file", "filename": secret}})), "qcow2"),
            "rel-backing-001": (_qcow2_backed_by(os.path.join(allowed, "rel.qcow2"), "../outside/secret"),
                                "qcow2"),
            "http-backing-01": (_qcow2_backed_by(os.path.join(allowed, "http.qcow2"),
                                                 f"http://127.0.0.1:{listener.port}/disk.raw"), "qcow2"),
            "nbd-backing-001": (_qcow2_backed_by(os.path.join(allowed, "nbd.qcow2"),
                                                 f"nbd://127.0.0.1:{listener.port}/x"), "qcow2"),
        }
        data_img = os.path.join(allowed, "datafile.qcow2")
        qemu_img("create", "-q", "-f", "qcow2",
                 "-o", f"data_file={os.path.join(allowed, 'dummy.raw')},data_file_raw=on", data_img, "1M")
        qemu_img("amend", "-f", "qcow2", "-o", f"data_file={secret}", data_img)
        hostile["data-file-0001"] = (data_img, "qcow2")
        vmdk = os.path.join(allowed, "extent.vmdk")
        with open(vmdk, "w") as fh:
            fh.write('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                     'createType="monolithicFlat"\n\n'
                     f'RW 2048 FLAT "{secret}" 0\n\nddb.virtualHWVersion = "4"\n')
        hostile["vmdk-extent-001"] = (vmdk, "vmdk")
        parent = os.path.join(os.path.dirname(secret), "tenant.vmdk")
        qemu_img("convert", "-f", "raw", "-O", "vmdk", secret, parent)
        child = os.path.join(allowed, "child.vmdk")
        qemu_img("create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", child)
        hostile["vmdk-parent-001"] = (child, "vmdk")
        for job_id, (image, fmt) in hostile.items():
            write_job(dirs.jobs, _convert_job(job_id, image, fmt, os.path.join(allowed, f"{job_id}.raw")))
        proc = cli("--once", "--allow-path", allowed, *dirs.args(), timeout=180)
        assert proc.returncode == 1, proc.stderr[-3000:]
        for job_id in hostile:
            result = dirs.result(job_id)
            assert result["status"] == "failed" and result["error"]["code"] == CODE, (job_id, result["error"])
            assert "--allow-backing-files" in result["error"]["message"]
            assert not os.path.exists(os.path.join(allowed, f"{job_id}.raw"))
        assert listener.connections == 0
        for root, _, files in os.walk(dirs.base):
            for name in files:
                path = os.path.join(root, name)
                if os.path.dirname(path) != os.path.dirname(secret) and not os.path.islink(path):
                    with open(path, "rb") as fh:
                        assert SECRET not in fh.read(), path
    finally:
        listener.close()


def test_allowed_backing_files_stay_inside_and_regular(dirs):
    """--allow-backing-files: a backing file inside the allowed directory is used; one outside,
    a json: name and a FIFO (which would hang the job until its timeout) are refused."""
    allowed, secret = _layout(dirs.base)
    base_img = os.path.join(allowed, "base.raw")
    with open(base_img, "wb") as fh:
        fh.write(b"base-image-content" * 100)
        fh.truncate(1 << 20)
    fifo = os.path.join(allowed, "fifo.raw")
    os.mkfifo(fifo)
    jobs = {
        "inside-back-001": _qcow2_backed_by(os.path.join(allowed, "inside.qcow2"), "base.raw"),
        "outside-back-01": _qcow2_backed_by(os.path.join(allowed, "outside.qcow2"), secret),
        "json-back-00001": _qcow2_backed_by(os.path.join(allowed, "json.qcow2"), "json:" + json.dumps(
            {"driver": "raw", "file": {"driver": "file", "filename": base_img}})),
        "fifo-back-00001": _qcow2_backed_by(os.path.join(allowed, "fifo.qcow2"), fifo),
    }
    for job_id, image in jobs.items():
        write_job(dirs.jobs, _convert_job(job_id, image, "qcow2", os.path.join(allowed, f"{job_id}.raw")))
    cli("--once", "--allow-path", allowed, "--allow-backing-files", *dirs.args(), timeout=180)
    assert dirs.result("inside-back-001")["status"] == "completed"
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", base_img,
                              os.path.join(allowed, "inside-back-001.raw")], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    words = {"outside-back-01": "outside the allowed directories",
             "json-back-00001": "not a plain local file", "fifo-back-00001": "not a regular file"}
    for job_id, needle in words.items():
        error = dirs.result(job_id)["error"]
        assert error["code"] == CODE and needle in error["message"], (job_id, error)
        assert not os.path.exists(os.path.join(allowed, f"{job_id}.raw"))


def test_the_engine_opens_what_was_checked_not_what_is_there_later(tmp_path):
    """Between the check and qemu's open, the image is replaced by one backed by the secret
    (rename), or rewritten in place with a backing file in its header: qemu-img still reads
    only the checked file (pinned descriptor, "backing": null)."""
    from guestkit_worker.engines.chain import check_chain
    allowed, secret = _layout(str(tmp_path))
    image = os.path.join(allowed, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", image, "1M")
    evil = _qcow2_backed_by(os.path.join(allowed, "evil.qcow2"), secret)
    for swap in ("rename", "in-place"):
        with check_chain(image, "qcow2", "payload.data.image.path", allowed=[allowed]) as chain:
            if swap == "rename":
                os.rename(image, image + ".old")
                os.link(evil, image)
            else:
                with open(evil, "rb") as src, open(image, "r+b") as dst:
                    dst.write(src.read())
            out = os.path.join(allowed, f"out-{swap}.raw")
            qemu_img("convert", "-O", "raw", chain.qemu_spec(), out)
        with open(out, "rb") as fh:
            assert SECRET not in fh.read(), swap
        # the same convert by path (what the worker did before) reads the secret
        leak = os.path.join(allowed, f"leak-{swap}.raw")
        qemu_img("convert", "-f", "qcow2", "-O", "raw", image, leak)
        with open(leak, "rb") as fh:
            assert fh.read(len(SECRET)) == SECRET
        if swap == "rename":
            os.unlink(image)
            os.rename(image + ".old", image)


def test_inspect_of_an_image_backed_by_another_tenants_disk_is_refused_before_any_appliance(tmp_path):
    """guestkit.inspect of a qcow2 whose backing file is another tenant's image fails before
    libguestfs starts, so it cannot report that tenant's hostname and users."""
    from guestkit_worker.handlers.inspect import InspectHandler
    from guestkit_worker.job.errors import HandlerError
    allowed, secret = _layout(str(tmp_path))
    image = _qcow2_backed_by(os.path.join(allowed, "mine.qcow2"), secret)
    ctx, metrics = make_context(tmp_path, allowed_paths=[allowed])
    started = []
    ctx.run = lambda argv, **kw: started.append(argv)
    handler = InspectHandler()
    handler.configure_paths(allowed_roots())
    with pytest.raises(HandlerError) as exc:
        try:
            handler.execute(ctx, {"image": {"path": image, "format": "qcow2"}})
        finally:
            handler.cleanup(ctx)
    assert exc.value.code == CODE and "a backing file" in exc.value.message
    assert started == []  # no qemu-img, no probe, no appliance


def test_validate_and_submit_judge_chains_like_the_worker(tmp_path):
    """`validate` (and `submit`) read the chain as a worker would, with or without
    --allow-backing-files (or GUESTKIT_WORKER_ALLOW_BACKING_FILES=true)."""
    from conftest import worker_env
    allowed, secret = _layout(str(tmp_path))
    base_img = os.path.join(allowed, "base.raw")
    with open(base_img, "wb") as fh:
        fh.truncate(1 << 20)
    inside = _qcow2_backed_by(os.path.join(allowed, "inside.qcow2"), "base.raw")
    outside = _qcow2_backed_by(os.path.join(allowed, "outside.qcow2"), secret)
    files = {}
    for name, image in (("inside", inside), ("outside", outside)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_convert_job(f"validate-{name}-01", image, "qcow2",
                                                os.path.join(allowed, f"{name}.raw"))))
        files[name] = str(path)
    proc = cli("validate", "--allow-path", allowed, files["inside"], files["outside"], check=1)
    assert proc.stdout.count("images that reference other files are refused") == 2, proc.stdout
    proc = cli("validate", "--allow-path", allowed, "--allow-backing-files", files["inside"], check=0)
    assert "ok (validate-inside-01" in proc.stdout
    env = worker_env(GUESTKIT_WORKER_ALLOW_BACKING_FILES="true")
    proc = cli("validate", "--allow-path", allowed, files["outside"], env=env, check=1)
    assert "outside the allowed directories" in proc.stdout
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    proc = cli("submit", "--jobs-dir", str(jobs), "--allow-path", allowed, files["inside"], check=1)
    assert "--allow-backing-files" in proc.stderr and os.listdir(jobs) == []
