"""Redis Streams transport (needs the ``redis`` extra: ``pip install '.[redis]'`` in a checkout).

Modules: :mod:`.keys` (key names), :mod:`.connection` (URL, password, clients), :mod:`.tls`,
:mod:`.scripts` (the Lua scripts; :func:`~.scripts.load_scripts`), :mod:`.hotcall` (the
submission's per-thread connection), and the parts :class:`~.transport.RedisTransport`
composes: :mod:`.link` (clients, outages, the worker id), :mod:`.held` (entries held),
:mod:`.queue` (delivery, leases, dead letters), :mod:`.reclaim` (taking over),
:mod:`.store` (results, idempotency, commit) and :mod:`.index` (status, list, cancel).
redis-py is imported only when a :class:`RedisTransport` is created.
"""

from .keys import GROUP, Keys
from .scripts import load_scripts
from .transport import RedisTransport, RedisUnavailable

__all__ = ["GROUP", "Keys", "RedisTransport", "RedisUnavailable", "load_scripts"]
