"""The in-memory transport's own guarantees, beside the contract suite (tests/contract/, which
runs every transport test against it too): leases decided by the injected clock alone, its
housekeeping, its dead letters, and that it is no operator's choice and imports nothing of
the runtime."""

import json
import subprocess
import sys

import pytest
from conftest import cli, make_job, worker_env

from guestkit_worker.job.errors import ConfigError
from guestkit_worker.runtime.config import WorkerConfig
from guestkit_worker.transports import open_transport
from guestkit_worker.transports.base import LeaseLost, Outcome
from guestkit_worker.transports.memory import MemoryBroker, MemoryTransport


class Clock:
    """A clock that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _pair(clock, **kw):
    broker = MemoryBroker(clock=clock)
    a, b = (MemoryTransport(w, broker=broker, lease_seconds=10, **kw) for w in ("mem-a", "mem-b"))
    a.open()
    b.open()
    return broker, a, b


def _result(job_id, worker_id, status="completed"):
    return {"job_id": job_id, "status": status, "completed_at": "2026-11-01T00:00:01Z",
            "worker_id": worker_id, "execution_summary": {"attempt": 1}, "error": None, "data": None}


def test_leases_run_on_the_injected_clock_alone():
    clock = Clock()
    _broker, a, b = _pair(clock)
    a.submit(make_job("mem-lease-1"))
    [d] = a.fetch(1, 0)
    a.mark_started(d)
    clock.now += 9.9
    assert b.reclaim(lambda *_: pytest.fail("taken before its lease ran out"), 5) == 0
    assert a.extend_lease(d)
    clock.now += 9.9  # 19.8 s after the start, 9.9 after the renewal
    assert b.reclaim(lambda *_: pytest.fail("a renewed lease was taken"), 5) == 0
    clock.now += 0.2
    taken = []
    assert b.reclaim(lambda r, previous: taken.append((r.job_id, r.started, previous)), 5) == 1
    assert taken == [("mem-lease-1", True, "mem-a")]
    assert a.extend_lease(d) is False
    o = Outcome(d, "completed", result=_result("mem-lease-1", "mem-a"))
    a.commit([o])
    assert isinstance(o.error, LeaseLost) and b.get_result("mem-lease-1") is None


def test_maintain_forgets_finished_jobs_a_result_ttl_after_they_ended():
    clock = Clock()
    _broker, a, _b = _pair(clock)
    for i in (1, 2):
        a.submit(make_job(f"mem-old-{i}"))
    [d] = a.fetch(1, 0)
    a.commit([Outcome(d, "completed", result=_result(d.job_id, "mem-a"), idempotency_key="mem-old-key")])
    clock.now += 3600
    a.maintain()
    assert a.get_result("mem-old-1")["status"] == "completed"  # within result_ttl (a week)
    clock.now += 7 * 24 * 3600
    a.maintain()
    assert a.get_result("mem-old-1") is None and a.job_status("mem-old-1") is None
    assert a.reserve_idempotency_key("mem-old-key", "mem-new-1").won  # its completed key went too
    assert a.job_status("mem-old-2").status == "pending" and a.depth() == 1  # a waiting job stays


def test_duplicates_and_entries_delivered_too_often_are_dead_letters():
    clock = Clock()
    broker, a, b = _pair(clock, max_deliveries=2)
    a.submit(make_job("mem-dup-1"))
    broker.add_raw(json.dumps(make_job("mem-dup-1")).encode())  # a producer bypassing submit
    [d] = a.fetch(4, 0)
    assert d.job_id == "mem-dup-1" and a.fetch(4, 0) == []
    holder = "mem-a"
    for n in (1, 2):  # each holder dies: taken over once (its second delivery), then dead-lettered
        broker.declare_dead(holder)
        c = MemoryTransport(f"mem-next-{n}", broker=broker, lease_seconds=10, max_deliveries=2)
        c.open()
        taken = []
        c.reclaim(lambda r, _previous, taken=taken: taken.append(r), 5)
        holder = c.worker_id
    assert taken == [] and broker.claims == {}
    reasons = [x["reason"] for x in broker.dead_letters()]
    assert reasons == ["duplicate_job_id", "max_deliveries"]
    status = a.job_status("mem-dup-1")
    assert status.status == "failed" and status.error["code"] == "DEAD_LETTERED"



def test_a_job_dead_lettered_before_it_started_frees_its_id():
    """Delivered too often without ever starting (its holders died before its handler ran):
    dead-lettered, and its job id takes a new submission and a producer's own entry again;
    requeueing the dead letter afterwards is refused as a duplicate of the new job."""
    clock = Clock()
    broker, a, _b = _pair(clock, max_deliveries=1)
    doc = make_job("mem-unrun-1")
    a.submit(doc)
    [d] = a.fetch(1, 0)  # taken, never started
    broker.declare_dead("mem-a")
    c = MemoryTransport("mem-next", broker=broker, lease_seconds=10, max_deliveries=1)
    c.open()
    assert c.reclaim(lambda r, _p: None, 5) == 0
    [dead] = c.dead_list().entries
    assert dead.reason == "max_deliveries" and dead.job_id == "mem-unrun-1"
    receipt = c.submit(dict(doc, payload={"type": "system.echo.v1", "data": {"fixed": True}}))
    assert receipt.outcome == "created" and c.job_status("mem-unrun-1").status == "pending"
    refused = c.dead_requeue(dead.entry)
    assert (refused.outcome, refused.reason) == ("refused", "duplicate_job_id")
    [again] = c.fetch(1, 0)
    assert json.loads(c.read(again))["payload"]["data"] == {"fixed": True}

@pytest.mark.integration
def test_memory_is_no_operators_choice():
    cfg = WorkerConfig(transport="memory")
    with pytest.raises(ConfigError, match="transport 'memory' keeps jobs inside one process"):
        open_transport(cfg)
    proc = cli("run", "--once", "--transport", "memory")
    assert proc.returncode == 2 and "--transport: expected file, redis or kafka, got 'memory'" in proc.stderr


@pytest.mark.integration
def test_it_imports_nothing_of_the_runtime():
    code = ("import sys, guestkit_worker.transports.memory as m; m.MemoryTransport('w').open(); "
            "print('\\n'.join(sorted(n for n in sys.modules if n.startswith('guestkit_worker'))))")
    out = subprocess.run([sys.executable, "-c", code], env=worker_env(), capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    # the job layer and the defaults below it, the interface, the steps the transports share
    # (transports.common) and the transport itself only
    allowed = ("guestkit_worker.job", "guestkit_worker.settings", "guestkit_worker.transports.memory")
    interface = {"guestkit_worker", "guestkit_worker.transports", "guestkit_worker.transports.base",
                 "guestkit_worker.transports.errors", "guestkit_worker.transports.records",
                 "guestkit_worker.transports.common"}
    assert interface | {"guestkit_worker.transports.memory.transport"} <= set(out)
    assert [m for m in out if m not in interface and not m.startswith(allowed)] == []
