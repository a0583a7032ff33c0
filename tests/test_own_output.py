"""A job's own earlier output is not an OUTPUT_EXISTS conflict: a convert or inspect that
published its output and runs again (its outcome was not stored, or its worker died after
publishing) replaces that output; anything else at the destination still fails the job with
OUTPUT_EXISTS.  Real qemu-img; ownership is the OWNER_XATTR written at publish."""

import os
import subprocess

import pytest
from conftest import allowed_roots, cli, make_job, require, require_tool, write_job
from fixtures_disk import make_context

from guestkit_worker.engines.outputs import OWNER_XATTR, PrivateOutput, is_own_output
from guestkit_worker.handlers.convert import ConvertHandler
from guestkit_worker.job.errors import HandlerError

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def source(tmp_path):
    qemu_img = require_tool("qemu-img")
    path = tmp_path / "src.raw"
    subprocess.run([qemu_img, "create", "-q", "-f", "raw", str(path), "1M"], check=True)
    return str(path)


def convert(tmp_path, source, dest, job_id):
    ctx, _ = make_context(tmp_path, job_id=job_id)
    handler = ConvertHandler()
    handler.configure_paths(allowed_roots())
    data = {"image": {"path": source, "format": "raw"}, "target_format": "qcow2",
            "output": {"destination": str(dest)}}
    handler.validate(data)
    try:
        return handler.execute(ctx, data)
    finally:
        handler.cleanup(ctx)


@pytest.mark.integration
def test_a_rerun_replaces_its_own_output_and_another_job_is_refused(tmp_path, source):
    dest = tmp_path / "out.qcow2"
    assert convert(tmp_path, source, dest, "own-out-0001").output == str(dest)
    assert os.getxattr(dest, OWNER_XATTR) == b"own-out-0001" and is_own_output(str(dest), "own-out-0001")
    first = os.stat(dest).st_ino
    # the same job again (its outcome was lost): completes, a new file in place
    assert convert(tmp_path, source, dest, "own-out-0001").output == str(dest)
    assert os.stat(dest).st_ino != first and dest.read_bytes()[:4] == b"QFI\xfb"
    # another job naming the same destination: OUTPUT_EXISTS, the file untouched
    with pytest.raises(HandlerError) as exc:
        convert(tmp_path, source, dest, "own-out-0002")
    assert exc.value.code == "OUTPUT_EXISTS" and "already exists" in exc.value.message
    assert os.getxattr(dest, OWNER_XATTR) == b"own-out-0001"


@pytest.mark.integration
@pytest.mark.parametrize("planted", ["unmarked", "other_job", "other_owner"])
def test_a_file_not_published_by_this_job_stays_a_conflict(tmp_path, source, planted):
    dest = tmp_path / "out.qcow2"
    dest.write_bytes(b"precious")
    if planted != "unmarked":
        os.setxattr(dest, OWNER_XATTR, b"own-out-0003" if planted == "other_owner" else b"own-out-9999")
    if planted == "other_owner":  # carries this job's id, but another user made it
        require(os.geteuid() == 0, "chown to another user needs root")
        os.chown(dest, 65534, 65534)
    before = os.lstat(dest)
    with pytest.raises(HandlerError) as exc:
        convert(tmp_path, source, dest, "own-out-0003")
    assert exc.value.code == "OUTPUT_EXISTS"
    assert os.lstat(dest).st_ino == before.st_ino and dest.read_bytes() == b"precious"


def test_a_destination_taken_while_the_job_ran_is_replaced_only_if_it_is_its_own(tmp_path):
    """publish() without overwrite: a file appearing meanwhile is refused, this job's is replaced."""
    dest = tmp_path / "report.json"
    for owner, expect in (("someone", "OUTPUT_EXISTS"), ("own-out-0004", None)):
        dest.write_bytes(b"there")
        os.setxattr(dest, OWNER_XATTR, owner.encode())
        with PrivateOutput(str(dest), "own-out-0004") as out:
            fd = out.create()
            os.write(fd, b"new")
            os.close(fd)
            if expect:
                with pytest.raises(HandlerError, match="appeared while the job ran"):
                    out.publish(False)
                assert dest.read_bytes() == b"there"
            else:
                out.publish(False)
                assert dest.read_bytes() == b"new" and os.getxattr(dest, OWNER_XATTR) == b"own-out-0004"


@pytest.mark.integration
def test_a_worker_reruns_a_convert_whose_result_was_lost(dirs, source, tmp_path):
    """Real CLI: a convert completes; its result is lost (removed) and its job file comes back
    (as after a crash between publishing and storing the outcome): the second run completes
    over its own output instead of failing with OUTPUT_EXISTS."""
    dest = os.path.join(dirs.work, "rerun.qcow2")
    doc = make_job("own-out-rerun-01", operation="guestkit.convert",
                   data={"image": {"path": source, "format": "raw"}, "target_format": "qcow2",
                         "output": {"destination": dest}})
    for run in (1, 2):
        write_job(dirs.jobs, doc)
        proc = cli("--once", *dirs.args(), timeout=120)
        result = dirs.result("own-out-rerun-01")
        assert proc.returncode == 0 and result["status"] == "completed", (run, result, proc.stderr[-2000:])
        assert os.getxattr(dest, OWNER_XATTR) == b"own-out-rerun-01"
        os.unlink(os.path.join(dirs.results, "own-out-rerun-01-result.json"))
        for sub in ("done", "failed"):
            for name in os.listdir(os.path.join(dirs.jobs, sub)):
                os.unlink(os.path.join(dirs.jobs, sub, name))
