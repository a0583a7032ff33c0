"""The in-memory transport: a queue and a store inside one process, for tests and for
embedding the worker in a program (``Worker(cfg, transport=MemoryTransport(...))``).

Nothing persists beyond the process and no other process can reach it, so it is not one of
the transports ``--transport`` offers.  It depends on nothing but the standard library and
the transport interface (:mod:`..base`).  Modules: :mod:`.broker` (the shared state, one
:class:`MemoryBroker` per queue), :mod:`.transport` (:class:`MemoryTransport`: delivery,
leases, reclaim) and :mod:`.store` (results, idempotency keys, commit, status, list, cancel).
"""

from .broker import MemoryBroker, MemoryUnavailable
from .transport import MemoryDelivery, MemoryTransport

__all__ = ["MemoryBroker", "MemoryDelivery", "MemoryTransport", "MemoryUnavailable"]
