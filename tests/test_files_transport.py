"""The file transport's own guarantees, beside the contract suite (tests/contract/)."""

import json
import os

import pytest

from guestkit_worker.job.outcomes import cancelled_before_start
from guestkit_worker.transports.files import FileTransport


def _transport(tmp_path, worker_id="files-w1"):
    t = FileTransport(str(tmp_path / "jobs"), str(tmp_path / "results"), worker_id, max_job_bytes=1 << 20,
                      durable=False)
    t.open()
    return t


def _echo_doc(job_id):
    return {"version": "1.0", "job_id": job_id, "created_at": "2026-11-01T00:00:00Z", "kind": "VMOperation",
            "operation": "system.echo", "payload": {"type": "system.echo.v1", "data": {}}}


def test_health_probe_creates_nothing_at_a_predictable_name_and_follows_no_link(tmp_path):
    """A link planted at a predictable probe name (.health-PID.tmp) keeps its target intact,
    and the probe leaves no file behind."""
    t = _transport(tmp_path)
    try:
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        for d in (t.layout.jobs_dir, t.layout.results_dir):
            os.symlink(victim, os.path.join(d, f".health-{os.getpid()}.tmp"))
        before = {d: sorted(os.listdir(d)) for d in (t.layout.jobs_dir, t.layout.results_dir)}
        checks = t.health()
        assert checks["jobs_dir"][0] and checks["results_dir"][0], checks
        assert victim.read_bytes() == b"precious"
        assert {d: sorted(os.listdir(d)) for d in before} == before
        assert all(str(tmp_path) not in detail for _ok, detail in checks.values())  # no paths revealed
    finally:
        t.close()


def test_health_reports_an_unwritable_results_dir(tmp_path):
    t = _transport(tmp_path)
    try:
        os.chmod(t.layout.results_dir, 0o500)
        if os.access(t.layout.results_dir, os.W_OK) and os.geteuid() == 0:
            os.chmod(t.layout.results_dir, 0o700)
            os.rename(t.layout.results_dir, t.layout.results_dir + ".gone")  # root ignores modes
        ok, detail = t.health()["results_dir"]
        assert not ok and detail
    finally:
        t.close()


def test_foreign_names_are_remembered_within_a_bound(tmp_path, monkeypatch):
    """Jobs meant for other pools are skipped for a while; the memory of them is bounded."""
    from guestkit_worker.transports.files import queue as queue_mod
    monkeypatch.setattr(queue_mod, "MAX_FOREIGN_NAMES", 5)
    t = _transport(tmp_path)
    try:
        for i in range(8):
            with open(os.path.join(t.layout.jobs_dir, f"foreign-{i}.json"), "w") as fh:
                fh.write("{}")
        for d in t.fetch(8, 1.0):
            t.release(d, not_for_me=True)
        assert len(t.queue.foreign) == 5
        # the three forgotten ones are offered again; the remembered ones are not
        assert sorted(d.name for d in t.fetch(8, 0.2)) == [f"foreign-{i}.json" for i in range(3)]
    finally:
        t.close()


@pytest.mark.integration
def test_a_running_job_id_is_held_once_and_freed_when_its_holder_dies(tmp_path):
    """Two deliveries of one job id: the second cannot hold it while the first does (also in
    the same worker); a worker holds all its ids through one descriptor; a worker process that
    dies holding it (SIGKILL) frees it; nothing is written per job."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    from guestkit_worker.transports.files.queue import FileDelivery

    def delivery(name):
        d = FileDelivery(name, "/nonexistent")
        d.job_id = "held-id-0001"
        return d
    a, b = _transport(tmp_path, "files-ida"), _transport(tmp_path, "files-idb")
    try:
        da, db, dc = delivery("x-1.json"), delivery("x-2.json"), delivery("x-3.json")
        assert a.hold_job_id(da)
        assert not b.hold_job_id(db) and db.id_busy
        assert not a.hold_job_id(dc)
        others = [delivery(f"y-{i}.json") for i in range(3)]
        for i, d in enumerate(others):
            d.job_id = f"other-id-{i:04d}"
            assert a.hold_job_id(d)
        lock_file = os.path.realpath(a.layout.running_ids_path)
        fds = [n for n in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{n}") == lock_file]
        assert len(fds) == 2  # one per worker (b opened its own for its try), not one per held id
        for d in others:
            a.job_ids.drop(d)
        a.job_ids.drop(da)
        assert b.hold_job_id(db)
        b.job_ids.drop(db)
        size = os.stat(b.layout.running_ids_path).st_size
        holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {ROOT!r})
from guestkit_worker.transports.files import FileTransport
from guestkit_worker.transports.files.queue import FileDelivery
t = FileTransport({str(tmp_path / "jobs")!r}, {str(tmp_path / "results")!r}, "files-idc", max_job_bytes=1024,
                  durable=False)
t.open()
d = FileDelivery("x-4.json", "/nonexistent")
d.job_id = "held-id-0001"
assert t.hold_job_id(d)
print("held", flush=True)
time.sleep(120)
"""], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            assert not b.hold_job_id(dc)
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
        assert b.hold_job_id(dc)
        assert os.stat(b.layout.running_ids_path).st_size == size == 0
    finally:
        a.close()
        b.close()


def test_status_is_the_stored_result_between_its_commit_and_the_archive(tmp_path):
    """GET /api/v1/jobs/ID after result?wait= answered: the result is stored but the job file is
    still .running until the committer archives it; status must already say how it ended, while
    a shutdown's cancelled result (a give-back that runs again) must not hide the new run."""
    from guestkit_worker.transports.base import Outcome
    t = _transport(tmp_path)
    try:
        doc = _echo_doc("between-commit-0001")
        t.submit(doc)
        delivery = t.fetch(1, 1.0)[0]
        t.read(delivery)
        delivery.job_id, delivery.attempt = doc["job_id"], 1
        t.mark_started(delivery)
        assert t.job_status(doc["job_id"]).status == "running"
        result = {"job_id": doc["job_id"], "status": "cancelled", "failed_at": "2026-11-01T00:00:01Z",
                  "worker_id": "files-w1", "operation": "system.echo",
                  "execution_summary": {"attempt": 1},
                  "error": {"code": "CANCELLED", "retry_recommended": True}}
        t.stage_result(Outcome(delivery, "cancelled", result=result))
        assert t.job_status(doc["job_id"]).status == "running", "a give-back result is not this run's end"
        result = dict(result, status="completed", completed_at="2026-11-01T00:00:02Z", error=None)
        result.pop("failed_at")
        t.stage_result(Outcome(delivery, "completed", result=result))
        st = t.job_status(doc["job_id"])
        assert (st.status, st.attempt) == ("completed", 1)
        assert st.submitted_at != doc["created_at"] and st.submitted_at.startswith("20")
        assert st.completed_at == "2026-11-01T00:00:02Z"
    finally:
        t.close()


_MOVER = r"""
import sys, time
from guestkit_worker.transports.files import FileTransport
jobs, results, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = FileTransport(jobs, results, "files-mover", max_job_bytes=1 << 20, durable=False)
t.open()
print("ready", flush=True)
for _ in range(cycles):   # claim, hold a moment, give back: jobs/ -> processing/ -> jobs/
    for d in t.fetch(1, 1.0):
        time.sleep(0.0005)
        t.release(d)
    time.sleep(0.0005)
t.close()
"""


@pytest.mark.integration
def test_a_job_moving_between_queue_and_worker_is_always_found_by_id(tmp_path):
    """A lookup by id checks the workers' dirs, then jobs/: a claim (jobs/ -> processing/) or a
    give-back followed by another worker's claim between the two checks must not answer "no such
    job" (a restarted worker's API would say 404 for a job it is recovering).  Another process
    claims and gives back one job 2,000 times while this one asks for its status all along."""
    import subprocess
    import sys
    t = _transport(tmp_path)
    try:
        doc = _echo_doc("moving-0001")
        t.submit(doc)
        mover = subprocess.Popen([sys.executable, "-c", _MOVER, t.layout.jobs_dir, t.layout.results_dir,
                                  "2000"], stdout=subprocess.PIPE, text=True)
        try:
            assert mover.stdout.readline().strip() == "ready"
            asked, missed, seen = 0, 0, set()
            while mover.poll() is None and asked < 200_000:
                st = t.job_status(doc["job_id"])
                asked += 1
                if st is None:
                    missed += 1
                else:
                    seen.add(st.worker_id)
            assert mover.wait(timeout=60) == 0
        finally:
            if mover.poll() is None:
                mover.kill()
                mover.wait()
        assert seen == {None, "files-mover"}, seen  # it did see the job in both places
        assert asked > 1000 and missed == 0, f"{missed} of {asked} lookups found no job"
    finally:
        t.close()


def test_submit_status_and_cancel_never_list_the_jobs_dir(tmp_path, monkeypatch):
    """With 3,000 jobs waiting, a new submission, a retried one, the status of a waiting, a
    finished and an unknown job and a cancel of an unknown one probe names only: jobs/ is never
    listed (each listing of it cost ~1 ms per 4,000 waiting jobs, on every POST and GET)."""
    from guestkit_worker.transports.base import Outcome
    t = _transport(tmp_path)
    try:
        for i in range(3000):
            with open(os.path.join(t.layout.jobs_dir, f"queued-{i:06d}.json"), "w") as fh:
                fh.write("{}")
        done = _echo_doc("finished-0001")
        t.submit(done)
        d = t.fetch(1, 1.0)[0]
        assert d.name == "finished-0001.json" or d.name.startswith("queued-")
        # finish finished-0001 by hand: its result stored, its job file archived
        while d.name != "finished-0001.json":
            t.release(d)
            d = t.fetch(1, 1.0)[0]
        t.read(d)
        d.job_id, d.attempt = "finished-0001", 1
        t.mark_started(d)
        result = {"job_id": "finished-0001", "status": "completed", "completed_at": "2026-11-01T00:00:02Z",
                  "worker_id": "files-w1", "operation": "system.echo", "execution_summary": {"attempt": 1}}
        t.commit([Outcome(d, "completed", result=result)])
        listed = []
        real_listdir, real_scandir = os.listdir, os.scandir

        def listdir(path="."):
            listed.append(os.fspath(path))
            return real_listdir(path)

        def scandir(path="."):
            listed.append(os.fspath(path))
            return real_scandir(path)
        monkeypatch.setattr(os, "listdir", listdir)
        monkeypatch.setattr(os, "scandir", scandir)
        assert t.submit(_echo_doc("new-job-0001")).outcome == "created"
        assert t.submit(_echo_doc("new-job-0001")).outcome == "exists"
        assert t.job_status("new-job-0001").status == "pending"
        assert t.job_status("finished-0001").status == "completed"
        assert t.job_status("never-submitted") is None
        assert t.cancel("never-submitted", cancelled_before_start) == "not_found"
        monkeypatch.undo()
        assert not [p for p in listed if os.path.realpath(p) == os.path.realpath(t.layout.jobs_dir)], listed
    finally:
        t.close()


def _waiting(jobs):
    return sorted(n for n in os.listdir(jobs) if n.endswith(".json"))


def test_a_job_given_back_under_an_alternate_name_is_found_by_id(tmp_path):
    """A producer reuses reuse-a.json while job reuse-a is held; reuse-a goes back to the queue
    as reuse-a.1.json (never over the other job), a second give-back of the same kind takes
    reuse-a.2.json; each is found by id, and back under its own name once that is free."""
    t = _transport(tmp_path)
    other = _transport(tmp_path, "files-w2")
    jobs = t.layout.jobs_dir
    try:
        t.submit(_echo_doc("reuse-a"))
        held = t.fetch(1, 1.0)[0]
        with open(os.path.join(jobs, "reuse-a.json"), "w") as fh:
            json.dump(_echo_doc("reuse-b"), fh)  # the producer reuses the name for another job
        t.release(held)
        assert _waiting(jobs) == ["reuse-a.1.json", "reuse-a.json"]
        held2 = other.fetch(1, 1.0)[0]  # another worker takes one of them
        found = t.job_status("reuse-a")
        assert found is not None and found.status in ("pending", "running"), found
        other.release(held2)
        names = _waiting(jobs)
        assert names in (["reuse-a.1.json", "reuse-a.json"], ["reuse-a.1.json", "reuse-a.2.json"]), names
        # take the file named reuse-a.json away for good: the job reuse-a is found under its alternate
        while "reuse-a.json" in _waiting(jobs):
            d = other.fetch(1, 1.0)[0]
            if d.name == "reuse-a.json":
                os.unlink(d.path)
                other.names.discard(d.name)
            else:
                other.release(d)
        st = t.job_status("reuse-a")
        assert st is not None and st.status == "pending", _waiting(jobs)
        d = t.fetch(1, 1.0)[0]
        t.release(d)  # its own name is free again: back as reuse-a.json
        assert "reuse-a.json" in _waiting(jobs) and t.job_status("reuse-a").status == "pending"
    finally:
        other.close()
        t.close()


def test_submit_writes_what_a_worker_reads_or_refuses_it(tmp_path):
    """submit writes the bytes it is given, else the document as one line; a form over
    max_job_bytes (what workers read) raises JobTooLarge and leaves nothing in jobs/."""
    from guestkit_worker.transports.base import JobTooLarge
    t = FileTransport(str(tmp_path / "jobs"), str(tmp_path / "results"), "files-w1", max_job_bytes=4000,
                      durable=False)
    t.open()
    try:
        doc = dict(_echo_doc("size-one-line"), payload={"type": "system.echo.v1", "data": {"n": [[1]] * 600}})
        assert len(json.dumps(doc, indent=2)) > 4000 > len(json.dumps(doc, separators=(",", ":")))
        assert t.submit(doc).outcome == "created"
        with open(os.path.join(t.layout.jobs_dir, "size-one-line.json"), "rb") as fh:
            stored = fh.read()
        assert json.loads(stored) == doc and stored.count(b"\n") == 0 and len(stored) < 4000
        sent = b"{\n" + json.dumps(_echo_doc("size-as-sent"))[1:].encode()
        assert t.submit(json.loads(sent), sent).outcome == "created"
        with open(os.path.join(t.layout.jobs_dir, "size-as-sent.json"), "rb") as fh:
            assert fh.read() == sent
        big = dict(_echo_doc("size-too-big"), payload={"type": "system.echo.v1", "data": {"n": [[1]] * 1200}})
        with pytest.raises(JobTooLarge, match=r"^the job document is \d+ bytes as stored, larger than the "
                                              r"limit of 4000 bytes \(--max-job-size\); it was not queued"):
            t.submit(big)
        assert _waiting(t.layout.jobs_dir) == ["size-as-sent.json", "size-one-line.json"]
    finally:
        t.close()


def test_a_claim_whose_decision_raises_is_archived_with_the_reason_the_worker_built(tmp_path):
    """Taking over a dead worker's job file, the decision raises: the file goes to failed/ with
    the reason document the worker's ``unrecoverable`` returned, as it is (the transport builds
    none of its own), and the takeover is reported to the observer."""
    from guestkit_worker.job import outcomes
    from guestkit_worker.transports.base import TransportObserver

    class Seen(TransportObserver):
        reclaimed = 0

        def jobs_reclaimed(self, n=1):
            self.reclaimed += n
    dead = tmp_path / "jobs" / ".processing" / "files-dead"
    dead.mkdir(parents=True)
    (dead / "raise-decide-01.json.running").write_text(json.dumps(_echo_doc("raise-decide-01")))
    seen = Seen()
    t = FileTransport(str(tmp_path / "jobs"), str(tmp_path / "results"), "files-w1", max_job_bytes=1 << 20,
                      durable=False, observer=seen)
    t.open()
    try:
        built = []

        def decide(delivery, worker):
            raise RuntimeError("the decision failed")

        def unrecoverable(delivery, worker, exc):
            error = outcomes.error_document("RECOVERY_FAILED", f"{worker}: {exc}", phase="recovery")
            built.append(outcomes.reason_document(delivery.name, "raise-decide-01", "failed", "files-w1",
                                                  error))
            return built[-1]
        assert t.reclaim(decide, 10, unrecoverable=unrecoverable) == 1
        with open(os.path.join(t.layout.failed_dir, "raise-decide-01.json.reason.json")) as fh:
            assert json.load(fh) == built[0]
        assert built[0]["error"]["message"] == "files-dead: the decision failed" and seen.reclaimed == 1
        assert os.listdir(t.layout.processing) == [] and not dead.exists()
    finally:
        t.close()
