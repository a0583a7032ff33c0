"""Hostile and broken job files, path confinement, file modes and a hostile HTTP client, all
against the real worker process.  docs/reliability.md maps every case to its test."""

import hashlib
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from conftest import cli, make_job, require_tool, wait_for, write_job
from faultkit import (
    OpenWatch,
    Worker,
    archived,
    cap_drop_prefix,
    journal_job,
    load_results,
    plugin_env,
    processing,
    read_journal,
    total,
    waiting,
)
from metricskit import get
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.timeout(240)

REJECTED = "rejected"


def _doc(job_id="hostile-0000001", **top):
    return make_job(job_id, **top)


def _raw(doc):
    return json.dumps(doc).encode()


def _deep_data(depth):
    """A job whose payload.data nests depth arrays (JSON text, the parser never built it)."""
    text = json.dumps(_doc("deep-data-00001"))
    return text.replace('"data": {}', '"data": {"x": ' + "[" * depth + "]" * depth + "}").encode()


# name -> (content or creator, error code, text the reason must contain)
# content: bytes (written with write-then-rename), a dict (JSON), or a callable(path) that
# creates the entry itself (links, FIFOs, directories).
def hostile_cases(base):
    outside = os.path.join(base, "outside")
    os.makedirs(outside, exist_ok=True)
    decoy = os.path.join(outside, "decoy-job.json")
    with open(decoy, "w") as fh:  # a valid job: following the link would run it
        json.dump(_doc("decoy-followed1"), fh)
    cases = {
        "invalid-json.json": (b'{"version": "1.0", "job_id": ', "INVALID_JOB_FILE", "invalid JSON"),
        "empty.json": (b"", "INVALID_JOB_FILE", "empty file"),
        "whitespace.json": (b" \n\t ", "INVALID_JOB_FILE", "empty file"),
        "bom.json": (b"\xef\xbb\xbf" + _raw(_doc("bom-job-000001")), "INVALID_JOB_FILE", "byte order mark"),
        "bad-utf8.json": (b'{"job_id": "caf\xe9-000001"}', "INVALID_JOB_FILE",
                          "not valid UTF-8 (byte offset 15)"),
        "array.json": (b"[" + _raw(_doc("in-an-array-01")) + b"]", "INVALID_JOB_FILE",
                       "must hold a JSON object, got array"),
        "string.json": (b'"job"', "INVALID_JOB_FILE", "must hold a JSON object, got string"),
        "big-50mib.json": (lambda p: _big_file(p, 50 << 20), "INVALID_JOB_FILE",
                           "larger than the limit of 1048576 bytes (--max-job-size)"),
        "deep-array.json": (b"[" * 100_000 + b"]" * 100_000, "INVALID_JOB_FILE", "JSON nested too deeply"),
        "deep-object.json": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "INVALID_JOB_FILE",
                             "JSON nested too deeply"),
        "deep-data.json": (_deep_data(100_000 // 2), "INVALID_JOB_FILE", "JSON nested too deeply"),
        "id-number.json": (_doc(12345678), "INVALID_JOB", "job_id: must be a string, got integer 12345678"),
        "operation-number.json": (_doc("op-number-0001", operation=7), "INVALID_JOB",
                                  "operation: must be a string, got integer 7"),
        "timeout-string.json": (_doc("timeout-str-001", execution={"timeout_seconds": "60"}), "INVALID_JOB",
                                'execution.timeout_seconds: must be an integer, got string "60"'),
        "priority-bool.json": (_doc("prio-bool-0001", execution={"priority": True}), "INVALID_JOB",
                               "execution.priority: must be an integer, got boolean true"),
        "version-number.json": (_doc("version-num-01", version=1.0), "INVALID_JOB",
                                "version: must be a string, got number 1.0"),
        "id-traversal.json": (_doc("../../etc/passwd"), "INVALID_JOB", "job_id: may only contain"),
        "id-absolute.json": (_doc("/abs/olute-path"), "INVALID_JOB", "job_id: may only contain"),
        "id-slash.json": (_doc("a/b"), "INVALID_JOB", "job_id: must be at least 8 characters, got 3"),
        "id-slash-long.json": (_doc("aaaaaa/bbbbbb"), "INVALID_JOB", "job_id: may only contain"),
        "id-nul.json": (_doc("job-\u0000-000001"), "INVALID_JOB", "job_id: may only contain"),
        "id-newline.json": (_doc("job-\n-0000001"), "INVALID_JOB", "job_id: may only contain"),
        "id-10000.json": (_doc("x" * 10_000), "INVALID_JOB",
                          "job_id: must be at most 128 characters, got 10000"),
        "id-dots.json": (_doc("........"), "INVALID_JOB", "job_id: may only contain"),
        "timeout-zero.json": (_doc("timeout-zero-01", execution={"timeout_seconds": 0}), "INVALID_JOB",
                              "execution.timeout_seconds: must be 1-604800, got 0"),
        "timeout-negative.json": (_doc("timeout-neg-001", execution={"timeout_seconds": -5}), "INVALID_JOB",
                                  "execution.timeout_seconds: must be 1-604800, got -5"),
        "timeout-huge.json": (_doc("timeout-huge-01", execution={"timeout_seconds": 10 ** 12}), "INVALID_JOB",
                              "execution.timeout_seconds: must be 1-604800, got 1000000000000"),
        "created-word.json": (_doc("created-word-01", created_at="yesterday"), "INVALID_JOB",
                              "created_at: must be an RFC 3339 timestamp"),
        "created-month13.json": (_doc("created-m13-001", created_at="2026-13-45T00:00:00Z"), "INVALID_JOB",
                                 "created_at: not a valid date/time"),
        "created-number.json": (_doc("created-num-001", created_at=1700000000), "INVALID_JOB",
                                "created_at: must be a string, got integer"),
        "deadline-past.json": (_doc("deadline-past-1", execution={"deadline": "2001-01-01T00:00:00Z"}),
                               "DEADLINE_EXCEEDED",
                               "deadline 2001-01-01T00:00:00Z has passed; the job was not run"),
        "link-shadow.json": (lambda p: os.symlink("/etc/shadow", p), "INVALID_JOB_FILE",
                             "is a symbolic link; job files must be regular files "
                             "(the link was not followed)"),
        "link-decoy.json": (lambda p: os.symlink(decoy, p), "INVALID_JOB_FILE", "is a symbolic link"),
        "link-dir.json": (lambda p: os.symlink(outside, p), "INVALID_JOB_FILE", "is a symbolic link"),
        "link-dangling.json": (lambda p: os.symlink(os.path.join(outside, "nowhere"), p), "INVALID_JOB_FILE",
                               "is a symbolic link"),
        "x.json": (os.mkfifo, "INVALID_JOB_FILE", "is a FIFO, not a regular file"),
        "dir.json": (os.mkdir, "INVALID_JOB_FILE", "is a directory, not a regular file"),
        "socket.json": (_bind_socket, "INVALID_JOB_FILE", "is a socket, not a regular file"),
        "device.json": (lambda p: os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3)), "INVALID_JOB_FILE",
                        "is a device, not a regular file"),  # /dev/null's numbers; never opened
        "n" * 245 + ".json": (_raw(_doc("long-file-name1")), "INVALID_JOB_FILE",
                              "name is 250 bytes long; job file names may have at most 200 bytes"),
        os.fsdecode(b"\xff\xfe-not-utf8.json"): (b"{oops", "INVALID_JOB_FILE", "invalid JSON"),
    }
    return cases, decoy


def _big_file(path, size):
    """A file of size bytes that starts like a job (written beside, then renamed)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        head = b'{"job_id": "big-file-00001", "pad": "'
        fh.write(head)
        block = b"x" * (1 << 20)
        left = size - len(head) - 2
        while left > 0:
            fh.write(block[:left])
            left -= len(block)
        fh.write(b'"}')
    os.rename(tmp, path)


_sockets = []


def _bind_socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    _sockets.append(s)


def _place(jobs_dir, name, content):
    path = os.path.join(jobs_dir, name)
    if callable(content):
        content(path)
    else:
        write_job(jobs_dir, content if isinstance(content, bytes) else _raw(content), name)


def _job_id_of(content):
    from guestkit_worker.job.protocol import peek_job_id
    return peek_job_id(content) if isinstance(content, dict) else None


@pytest.mark.integration
def test_hostile_job_files_rejected_and_worker_keeps_serving(dirs):
    cases, decoy = hostile_cases(dirs.base)
    watch = OpenWatch(decoy, os.path.dirname(decoy))
    env = plugin_env(dirs.base)
    w = Worker(dirs, "--worker-id", "hostile-w1", env=env)
    try:
        write_job(dirs.jobs, make_job("before-hostile1"), "0-before.json")
        wait_for(lambda: "0-before.json" in dirs.listing("done"), what="first good job")
        threads_before = w.threads()
        for name, (content, _, _) in cases.items():
            _place(dirs.jobs, name, content)
        write_job(dirs.jobs, make_job("after-hostile01"), "zzzz-after.json")

        def settled():
            failed = set(archived(dirs, "failed"))
            return failed if len(failed) == len(cases) and "zzzz-after.json" in dirs.listing("done") else None
        wait_for(settled, timeout=120, what="every hostile file in failed/")

        # every case: in failed/ with a reason naming the problem
        reasons = {}
        for name in os.listdir(os.path.join(dirs.jobs, "failed")):
            if name.endswith(".reason.json"):
                with open(os.path.join(dirs.jobs, "failed", name)) as fh:
                    doc = json.load(fh)
                reasons[doc["job_file"]] = doc
        assert sorted(reasons) == sorted(cases)
        results, broken = load_results(dirs)
        assert not broken
        for name, (content, code, text) in cases.items():
            reason = reasons[name]
            assert reason["status"] == REJECTED, name
            assert reason["error"]["code"] == code, (name, reason["error"])
            assert text in reason["error"]["message"], (name, reason["error"]["message"])
            job_id = _job_id_of(content)
            if job_id:  # a usable job id: a result document says the same
                assert results[job_id]["status"] == "failed"
                assert results[job_id]["error"]["code"] == code
                assert results[job_id]["error"]["message"] == reason["error"]["message"]
        # only the documents with a usable id got results; nothing was run or written elsewhere
        ids = {_job_id_of(c) for c, _, _ in cases.values()} - {None}
        assert set(results) == ids | {"before-hostile1", "after-hostile01"}
        assert results["after-hostile01"]["status"] == "completed"
        assert "decoy-followed1" not in results and os.path.exists(decoy)
        assert watch.events() == []  # the link targets were never opened (nor listed)
        assert not os.path.exists(os.path.join(dirs.base, "etc"))
        assert not os.path.exists(os.path.join(dirs.results, "..", "..", "etc", "passwd-result.json"))
        assert not any("root:" in json.dumps(r) for r in reasons.values())  # /etc/shadow never read
        # archived entries keep their kind: the link is still a link, the FIFO a FIFO
        failed_dir = os.path.join(dirs.jobs, "failed")
        assert os.path.islink(os.path.join(failed_dir, "link-shadow.json"))
        assert stat.S_ISFIFO(os.lstat(os.path.join(failed_dir, "x.json")).st_mode)
        assert os.path.isdir(os.path.join(failed_dir, "dir.json"))
        assert waiting(dirs) == [] and processing(dirs) == []

        # counted as rejected, once each; the worker still serves
        s = w.counted(len(cases) + 2)
        assert total(s, "guestkit_worker_jobs_total", status=REJECTED) == len(cases)
        assert total(s, "guestkit_worker_jobs_total", status="completed") == 2
        assert total(s, "guestkit_worker_jobs_total", status="failed") == 0
        assert get(w.url + "/health")[0] == 200
        write_job(dirs.jobs, make_job("after-after-001"))
        wait_for(lambda: "after-after-001.json" in dirs.listing("done"), what="a job after the storm")
        assert w.alive()
        assert "Traceback" not in w.log()
        wait_for(lambda: w.threads() == threads_before, timeout=20, what="thread count back to its level")
    finally:
        watch.close()
        w.ensure_stopped()
        for s in _sockets:
            s.close()


@pytest.mark.integration
def test_duplicate_job_id_of_a_running_job_is_rejected(dirs):
    journal = os.path.join(dirs.base, "journal")
    env = plugin_env(dirs.base)
    w = Worker(dirs, env=env)
    try:
        write_job(dirs.jobs, journal_job("dup-running-01", journal, 3, data={"tag": "first"}), "first.json")
        wait_for(lambda: dirs.running() == ["first.json.running"], what="first running")
        write_job(dirs.jobs, journal_job("dup-running-01", journal, 0, data={"tag": "second"}), "second.json")
        reason = wait_for(lambda: os.path.exists(os.path.join(dirs.jobs, "failed", "second.json.reason.json"))
                          and dirs.reason("second.json"), what="duplicate rejected")
        assert reason["error"]["code"] == "DUPLICATE_JOB_ID"
        assert "a job with id dup-running-01 is already running" in reason["error"]["message"]
        assert not os.path.exists(os.path.join(dirs.results, "dup-running-01-result.json"))  # not overwritten
        wait_for(lambda: "first.json" in dirs.listing("done"), what="first completed")
        result = dirs.result("dup-running-01")
        assert (result["status"], result["data"]["tag"]) == ("completed", "first")
        assert read_journal(journal) == {"dup-running-01": [1]}  # the duplicate never ran
        s = w.counted(2)
        assert total(s, "guestkit_worker_jobs_total", status=REJECTED) == 1
        assert total(s, "guestkit_worker_jobs_total", status="completed") == 1
    finally:
        w.ensure_stopped()


def test_job_file_removed_between_listing_and_claiming(dirs):
    """The scan lists a name, the producer deletes the file, then a job thread claims it."""
    from guestkit_worker.runtime.config import WorkerConfig
    from guestkit_worker.runtime.worker import Worker as InProcessWorker
    for i in range(3):
        write_job(dirs.jobs, make_job(f"stays-{i:08d}"), f"stays-{i}.json")
    for i in range(3):
        write_job(dirs.jobs, make_job(f"vanish-{i:07d}"), f"vanish-{i}.json")
    cfg = WorkerConfig(jobs_dir=dirs.jobs, results_dir=dirs.results, work_dir=dirs.work, worker_id="vanish-w",
                       max_concurrent=2, poll_interval=0.05, once=True, durable=False)
    worker = InProcessWorker(cfg, registry=CollectorRegistry())
    real_claim = worker.transport.queue.claim
    gone = []

    def claim(name):
        if name.startswith("vanish-"):
            os.unlink(os.path.join(dirs.jobs, name))  # removed after the listing, before the rename
            gone.append(name)
        return real_claim(name)
    worker.transport.queue.claim = claim
    worker.open()
    assert worker.run() == 0
    assert sorted(gone) == [f"vanish-{i}.json" for i in range(3)]
    assert dirs.listing("done") == [f"stays-{i}.json" for i in range(3)]
    assert dirs.listing("failed") == [] and waiting(dirs) == [] and processing(dirs) == []
    assert sorted(dirs.all_results()) == [f"stays-{i:08d}" for i in range(3)]
    assert worker.outcomes == {"completed": 3}
    samples = {(m.name, s.labels.get("status")): s.value for m in worker.metrics.registry.collect()
               for s in m.samples if s.name == "guestkit_worker_jobs_total"}
    assert sum(v for (n, st), v in samples.items() if st == REJECTED) == 0


@pytest.mark.integration
def test_job_file_without_read_permission(dirs):
    prefix = cap_drop_prefix()
    path = write_job(dirs.jobs, make_job("no-read-perm-01"), "unreadable.json")
    os.chmod(path, 0)
    write_job(dirs.jobs, make_job("readable-job-01"), "zz-readable.json")
    w = Worker(dirs, "--once", prefix=prefix, metrics=False)
    rc = w.proc.wait(timeout=60)
    assert rc == 1, w.log()[-3000:]
    reason = dirs.reason("unreadable.json")
    assert reason["error"]["code"] == "INVALID_JOB_FILE"
    assert reason["error"]["message"] == "file: permission denied reading the job file"
    assert reason["job_id"] is None  # nothing of the file was read
    assert dirs.result("readable-job-01")["status"] == "completed"
    assert os.stat(os.path.join(dirs.jobs, "failed", "unreadable.json")).st_mode & 0o777 == 0


# -- --allow-path and the worker's own files ----------------------------------------------

def _convert_job(job_id, image, dest=None, **output):
    data = {"image": {"path": image, "format": "raw"}, "target_format": "qcow2"}
    if dest is not None:
        data["output"] = dict(destination=dest, **output)
    return make_job(job_id, "guestkit.convert", data)


def _inspect_job(job_id, image):
    return make_job(job_id, "guestkit.inspect", {"image": {"path": image, "format": "raw"}})


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.mark.integration
def test_allow_path_confines_images_and_outputs(dirs):
    require_tool("qemu-img")
    base = dirs.base
    allowed, outside = os.path.join(base, "allowed"), os.path.join(base, "outside")
    os.makedirs(allowed)
    os.makedirs(outside)
    for d in (allowed, outside):
        with open(os.path.join(d, "disk.raw"), "wb") as fh:
            fh.truncate(1 << 20)
    os.symlink(os.path.join(outside, "disk.raw"), os.path.join(allowed, "link.raw"))
    os.symlink(outside, os.path.join(allowed, "out-link"))
    inside_img, outside_img = os.path.join(allowed, "disk.raw"), os.path.join(outside, "disk.raw")
    watch = OpenWatch(outside_img)
    jobs = {
        "allowed-convert": (_convert_job("allowed-convert", inside_img, os.path.join(allowed, "out.qcow2")),
                            None),
        "image-outside01": (_convert_job("image-outside01", outside_img, os.path.join(allowed, "o1.qcow2")),
                            "payload.data.image.path"),
        "image-dotdot001": (_convert_job("image-dotdot001",
                                         os.path.join(allowed, "..", "outside", "disk.raw"),
                                         os.path.join(allowed, "o2.qcow2")), "payload.data.image.path"),
        "image-symlink01": (_convert_job("image-symlink01", os.path.join(allowed, "link.raw"),
                                         os.path.join(allowed, "o3.qcow2")), "payload.data.image.path"),
        "dest-outside001": (_convert_job("dest-outside001", inside_img, os.path.join(outside, "o4.qcow2")),
                            "payload.data.output.destination"),
        "dest-dotdot0001": (_convert_job("dest-dotdot0001", inside_img,
                                         os.path.join(allowed, "..", "outside", "o5.qcow2")),
                            "payload.data.output.destination"),
        "dest-linkdir001": (_convert_job("dest-linkdir001", inside_img,
                                         os.path.join(allowed, "out-link", "o6.qcow2")),
                            "payload.data.output.destination"),
        "inspect-outside": (_inspect_job("inspect-outside", outside_img), "payload.data.image.path"),
    }
    for doc, _ in jobs.values():
        write_job(dirs.jobs, doc)
    textfile = os.path.join(base, "textfile")
    os.makedirs(textfile)
    proc = cli("--once", "--allow-path", allowed, "--allow-path", os.path.join(base, "also-allowed"),
               "--textfile-dir", textfile, *dirs.args(), timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = dirs.all_results()
    assert results["allowed-convert"]["status"] == "completed", results["allowed-convert"]["error"]
    assert os.path.exists(os.path.join(allowed, "out.qcow2"))
    for job_id, (_, field) in jobs.items():
        if field is None:
            continue
        error = results[job_id]["error"]
        assert (results[job_id]["status"], error["code"], error["phase"]) == (
            "failed", "PATH_NOT_ALLOWED", "validation"), job_id
        assert (error["message"].startswith(field + ": ")
                and "outside the allowed directories" in error["message"])
        # refused while validating: rejected, archived in failed/ with the same reason
        reason = dirs.reason(f"{job_id}.json")
        assert (reason["status"], reason["error"]["message"]) == (REJECTED, error["message"]), job_id
    s = _textfile_samples(textfile)
    assert total(s, "guestkit_worker_jobs_total", status=REJECTED) == len(jobs) - 1
    assert total(s, "guestkit_worker_jobs_total", status="failed") == 0
    assert total(s, "guestkit_worker_jobs_total", status="completed") == 1
    assert os.listdir(outside) == ["disk.raw"]  # nothing written outside
    assert watch.events() == []  # the image outside was never opened
    watch.close()


def _textfile_samples(directory):
    """Samples of the exposition a one-shot run wrote for node_exporter (--textfile-dir)."""
    from metricskit import parse
    with open(os.path.join(directory, "guestkit_worker.prom")) as fh:
        return parse(fh.read())


@pytest.mark.integration
def test_allow_path_refusal_does_not_tell_whether_a_path_exists(dirs):
    """With --allow-path a path outside is refused before anything looks at it: an existing
    file (/etc/shadow), a directory, a device, a FIFO and a path that does not exist get the
    same reason, for the image of both disk handlers and for output destinations.  Each job is
    rejected while validating (reason file in failed/, counted as rejected, never run)."""
    base = dirs.base
    allowed, outside = os.path.join(base, "allowed"), os.path.join(base, "outside")
    os.makedirs(allowed)
    os.makedirs(outside)
    image = os.path.join(allowed, "disk.raw")
    with open(image, "wb") as fh:
        fh.truncate(1 << 20)
    secret = os.path.join(outside, "secret.raw")
    with open(secret, "wb") as fh:
        fh.truncate(1 << 20)
    fifo = os.path.join(outside, "fifo.raw")
    os.mkfifo(fifo)
    # what is there: an existing file, a directory, a device, a FIFO, nothing, nothing (no parent)
    images = {"shadow": "/etc/shadow", "secret": secret, "dir": "/etc", "device": "/dev/null", "fifo": fifo,
              "missing": "/etc/no-such-file-a7f3.raw", "noparent": "/no-such-dir-a7f3/x.raw",
              "dotdot": os.path.join(allowed, "..", "outside", "nothing.raw")}
    # outputs only under outside/: a regression must not be able to write anywhere that matters
    outputs = {"secret": secret, "dir": outside, "fifo": fifo, "missing": os.path.join(outside, "new.qcow2"),
               "noparent": os.path.join(outside, "no-dir", "x.qcow2"),
               "dotdot": os.path.join(allowed, "..", "outside", "new.json")}
    watch = OpenWatch(secret, outside)
    jobs = {}  # job_id -> (field, probed path, document)
    for kind, path in images.items():
        jobs[f"cv-img-{kind}"] = ("payload.data.image.path", path,
                                  _convert_job(f"cv-img-{kind}", path,
                                               os.path.join(allowed, f"{kind}.qcow2")))
        jobs[f"in-img-{kind}"] = ("payload.data.image.path", path, _inspect_job(f"in-img-{kind}", path))
    for kind, path in outputs.items():
        jobs[f"cv-out-{kind}"] = ("payload.data.output.destination", path,
                                  _convert_job(f"cv-out-{kind}", image, path))
        inspect_out = _inspect_job(f"in-out-{kind}", image)
        inspect_out["payload"]["data"]["output"] = {"destination": path}
        jobs[f"in-out-{kind}"] = ("payload.data.output.destination", path, inspect_out)
    for _, _, doc in jobs.values():
        write_job(dirs.jobs, doc)
    textfile = os.path.join(base, "textfile")
    os.makedirs(textfile)
    proc = cli("--once", "--allow-path", allowed, "--textfile-dir", textfile, *dirs.args(), timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    shapes = set()
    for job_id, (field, path, _) in jobs.items():
        reason = dirs.reason(f"{job_id}.json")
        error = reason["error"]
        assert (reason["status"], error["code"], error["phase"]) == (
            REJECTED, "PATH_NOT_ALLOWED", "validation"), (job_id, error)
        assert error["message"] == f"{field}: {path} is outside the allowed directories ({allowed})", job_id
        assert error["details"] == {"field": field}
        assert dirs.result(job_id)["error"] == error
        shapes.add(error["message"].replace(path, "PATH").replace(field, "FIELD"))
    assert shapes == {f"FIELD: PATH is outside the allowed directories ({allowed})"}
    assert sorted(archived(dirs, "failed")) == sorted(f"{j}.json" for j in jobs)
    s = _textfile_samples(textfile)
    assert total(s, "guestkit_worker_jobs_total", status=REJECTED) == len(jobs)
    assert total(s, "guestkit_worker_jobs_total", status="failed") == 0
    assert total(s, "guestkit_handler_executions_total") == 0  # no handler ever ran
    assert watch.events() == []  # nothing outside opened (the FIFO would block), not even listed
    watch.close()
    assert sorted(os.listdir(outside)) == ["fifo.raw", "secret.raw"]  # nothing written outside
    assert not os.path.exists("/etc/no-such-file-a7f3.raw") and not os.path.exists("/no-such-dir-a7f3")


@pytest.mark.integration
def test_outputs_never_overwrite_the_workers_own_files(dirs):
    base = dirs.base
    os.makedirs(os.path.join(base, "allowed"))
    image = os.path.join(base, "allowed", "disk.raw")
    with open(image, "wb") as fh:
        fh.truncate(1 << 20)
    write_job(dirs.jobs, make_job("earlier-result1", execution={"idempotency_key": "k-earlier"}))
    cli("--once", *dirs.args(), check=0)
    idem = os.path.join(dirs.results, ".idempotency")
    own = {p: _sha(p) for p in [os.path.join(dirs.results, "earlier-result1-result.json")] +
           [os.path.join(idem, n) for n in os.listdir(idem)]}
    assert len(own) == 2
    os.symlink(dirs.results, os.path.join(base, "allowed", "results-link"))
    targets = {
        "dest-result-001": os.path.join(dirs.results, "earlier-result1-result.json"),
        "dest-idem-00001": next(p for p in own if ".idempotency" in p),
        "dest-jobs-00001": os.path.join(dirs.jobs, "sneaky.json"),
        "dest-done-00001": os.path.join(dirs.jobs, "done", "earlier-result1.json"),
        "dest-reslink001": os.path.join(base, "allowed", "results-link", "earlier-result1-result.json"),
    }
    for flags in (["--allow-path", base], ["--allow-path", "/"]):  # even with / own files are off limits
        for job_id, dest in targets.items():
            write_job(dirs.jobs, _convert_job(job_id, image, dest, overwrite=True))
        cli("--once", *flags, *dirs.args(), check=1)
        for job_id in targets:
            error = dirs.result(job_id)["error"]
            assert error["code"] == "PATH_NOT_ALLOWED", (flags, job_id, error)
            assert "inside the worker's own directory" in error["message"]
    assert {p: _sha(p) for p in own} == own
    assert not os.path.exists(os.path.join(dirs.jobs, "sneaky.json"))


@pytest.mark.integration
@pytest.mark.parametrize("sub", ["failed", "done", ".processing"])
def test_planted_link_for_an_archive_dir_is_refused(dirs, sub):
    """Whoever may write jobs/ could put a link where done/ or failed/ belong, sending archived
    job files (names and contents of their choosing) into another directory."""
    target = os.path.join(dirs.base, "elsewhere")
    os.makedirs(target)
    os.symlink(target, os.path.join(dirs.jobs, sub))
    write_job(dirs.jobs, b"{not json", "daemon.json")
    proc = cli("--once", *dirs.args(), timeout=60)
    assert proc.returncode == 2
    refusal = f"{os.path.join(dirs.jobs, sub)} is a symbolic link or not a directory; refusing to use it"
    assert refusal in proc.stderr
    assert os.listdir(target) == [] and waiting(dirs) == ["daemon.json"]


@pytest.mark.integration
def test_planted_progress_link_is_not_followed(dirs):
    victim = os.path.join(dirs.base, "victim.txt")
    with open(victim, "w") as fh:
        fh.write("untouched\n")
    os.symlink(victim, os.path.join(dirs.results, "progress-link-01-progress.jsonl"))
    journal = os.path.join(dirs.base, "journal")
    write_job(dirs.jobs, journal_job("progress-link-01", journal, data={"progress": True}))
    w = Worker(dirs, "--once", env=plugin_env(dirs.base), metrics=False)
    assert w.proc.wait(timeout=60) == 0
    assert Path(victim).read_text() == "untouched\n"
    assert dirs.result("progress-link-01")["status"] == "completed"
    assert "cannot append progress" in w.log()


# -- modes of what the worker creates -----------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("umask, files, dirs_mode", [(0o000, 0o640, 0o770), (0o022, 0o640, 0o750),
                                                     (0o077, 0o600, 0o700)])
def test_created_files_never_exceed_0640(tmp_path, umask, files, dirs_mode):
    from conftest import Dirs
    base = tmp_path / "w"
    base.mkdir()
    d = Dirs(base)
    journal = os.path.join(d.base, "journal")
    env = plugin_env(d.base)
    write_job(d.jobs, journal_job("mode-complete01", journal, data={"progress": True},
                                  execution={"idempotency_key": "mode-key"}))
    write_job(d.jobs, make_job("mode-rejected01", execution={"priority": 99}))
    write_job(d.jobs, make_job("mode-failed0001", "test.raise"))
    w = Worker(d, "--once", "--worker-id", "mode-w", env=env, metrics=False, umask=umask)
    assert w.proc.wait(timeout=60) == 1, w.log()[-2000:]
    created = {
        "result": os.path.join(d.results, "mode-complete01-result.json"),
        "failed result": os.path.join(d.results, "mode-failed0001-result.json"),
        "progress": os.path.join(d.results, "mode-complete01-progress.jsonl"),
        "reason": os.path.join(d.jobs, "failed", "mode-rejected01.json.reason.json"),
    }
    created["idempotency record"] = os.path.join(d.results, ".idempotency",
                                                 os.listdir(os.path.join(d.results, ".idempotency"))[0])
    for what, path in created.items():
        assert stat.S_IMODE(os.stat(path).st_mode) == files, (what, oct(os.stat(path).st_mode))
    for sub in ("done", "failed", ".processing"):
        assert stat.S_IMODE(os.stat(os.path.join(d.jobs, sub)).st_mode) == dirs_mode, sub
    assert stat.S_IMODE(os.stat(os.path.join(d.results, ".idempotency")).st_mode) == dirs_mode


# -- the HTTP endpoint under a hostile client ---------------------------------------------

def _exchange(url, data, timeout=10):
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server may answer and close before reading everything
            pass
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _status(reply):
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


@pytest.mark.integration
def test_http_endpoint_exposes_only_metrics_and_health(dirs):
    with open("/etc/passwd", "rb") as fh:
        passwd_line = fh.readline().strip()
    w = Worker(dirs)
    try:
        url = w.url
        for path in ("/etc/passwd", "/../../../../etc/passwd", "//etc/passwd", "/metrics/../../etc/passwd",
                     "/%2e%2e/%2e%2e/etc/passwd", "/health/../jobs", "/jobs", "/results", "/submit",
                     "/metrics%00.json", "/" + dirs.jobs.lstrip("/")):
            reply = _exchange(url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert _status(reply) == 404, (path, reply[:200])
            assert passwd_line not in reply
        for target in ("file:///etc/passwd", "http://127.0.0.1/etc/passwd"):
            reply = _exchange(url, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert _status(reply) in (400, 404) and passwd_line not in reply, target
        body = json.dumps(make_job("posted-job-0001")).encode()
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("/", "/jobs", "/metrics", "/health", "/jobs/posted-job-0001.json"):
                head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                assert _status(_exchange(url, head + body)) in (404, 405), (method, path)
        assert waiting(dirs) == [] and dirs.all_results() == {}  # nothing was submitted
        assert get(url + "/health")[0] == 200
    finally:
        w.ensure_stopped()


@pytest.mark.integration
def test_http_garbage_long_urls_and_idle_connections_do_not_stop_a_scrape(dirs):
    w = Worker(dirs, "--worker-id", "http-hostile")
    socks, stop = [], threading.Event()
    try:
        url = w.url
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        port = int(port)
        w.wait_running()
        baseline = w.threads()
        # 100 idle connections held open, and 10 that trickle a request one byte at a time
        for _ in range(100):
            socks.append(socket.create_connection((host, port), timeout=10))

        def trickle():
            with socket.create_connection((host, port), timeout=10) as s:
                for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
                    if stop.wait(0.2):
                        return
                    try:
                        s.sendall(bytes([b]))
                    except OSError:
                        return
        tricklers = [threading.Thread(target=trickle, daemon=True) for _ in range(10)]
        for t in tricklers:
            t.start()
        # the trickling clients each get a connection thread; the idle ones get none
        wait_for(lambda: w.threads() >= baseline + 10, timeout=20, what="a thread per trickling client")
        assert w.threads() <= baseline + 64
        # garbage and very long request lines, while those are held
        garbage = [b"\x00\xff" * 512 + b"\r\n\r\n", b"GARBAGE\r\n\r\n", b"GET\r\n\r\n",
                   b"\x16\x03\x01\x02\x00" * 20,
                   b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                   b"GET /metrics?" + b"name[]=x&" * 100_000 + b" HTTP/1.1\r\n\r\n",
                   b"GET /metrics HTTP/1.1\r\n" + b"X-Long: " + b"h" * 100_000 + b"\r\n\r\n"]
        statuses = [_status(_exchange(url, g)) for g in garbage]
        assert statuses[:4] == [400, 400, 400, 400], statuses
        assert statuses[4] == 414 and statuses[5] == 414 and statuses[6] in (400, 431), statuses
        # a job flows and a scrape answers promptly while all of that is going on
        write_job(dirs.jobs, make_job("during-storm-01"))
        wait_for(lambda: "during-storm-01.json" in dirs.listing("done"), what="job during the storm")
        w.counted(1)
        started = time.monotonic()
        s = w.samples()
        assert time.monotonic() - started < 10.0  # not held until the tricklers' 30 s request deadline
        assert total(s, "guestkit_worker_jobs_total", status="completed") == 1
        status, _, body = get(url + "/health", timeout=5)
        assert status == 200 and json.loads(body)["status"] == "healthy"
        assert w.alive()
    finally:
        stop.set()
        for s in socks:
            s.close()
    try:
        # the held connections' threads go away once the clients are gone
        wait_for(lambda: w.threads() <= baseline, timeout=30,
                 what=f"connection threads released ({baseline} at start)")
    finally:
        w.ensure_stopped()
