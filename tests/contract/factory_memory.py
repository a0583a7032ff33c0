"""The in-memory transport in the contract suite: one MemoryBroker per test, whose clock runs
with the real one and jumps when a test lets time pass for leases (advance, lapse)."""

import time

from guestkit_worker.transports.memory import MemoryBroker, MemoryTransport

NAME = "memory"

#: long enough never to run out by itself during a test; the clock jumps instead
LEASE_SECONDS = 30.0


class MemoryFactory:
    def __init__(self):
        self.skew = 0.0
        self.broker = MemoryBroker(clock=lambda: time.monotonic() + self.skew)

    def make(self, worker_id, *, max_job_bytes=1 << 20, observer=None):
        return MemoryTransport(worker_id, broker=self.broker, lease_seconds=LEASE_SECONDS,
                               max_job_bytes=max_job_bytes, observer=observer)

    def kill(self, transport):
        self.broker.declare_dead(transport.worker_id)

    def advance(self, seconds):
        self.skew += seconds

    def lapse(self, transport):
        self.skew += transport.lease_seconds + 1

    def break_store(self):
        self.broker.set_unavailable("the contract suite broke it")

    def mend_store(self):
        self.broker.set_unavailable(None)

    def inject_raw(self, data, name):
        self.broker.add_raw(data)

    def close(self):
        pass


def make_factory(request, tmp_path):
    return MemoryFactory()
