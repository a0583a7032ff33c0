"""Redis Streams transport (needs the ``redis`` extra: ``pip install 'guestkit-worker[redis]'``).

Modules: :mod:`.keys` (key names), :mod:`.connection` (URL, password, clients),
:mod:`.scripts` (the Lua scripts; :func:`~.scripts.load_scripts`), :mod:`.queue` (delivery,
leases, reclaim, dead letters), :mod:`.store` (results, idempotency, commit), :mod:`.index`
(status, list, cancel) and :mod:`.transport` (:class:`~.transport.RedisTransport`).
redis-py is imported only when a :class:`RedisTransport` is created.
"""

from .keys import GROUP, Keys
from .scripts import load_scripts
from .transport import RedisTransport, RedisUnavailable

__all__ = ["GROUP", "Keys", "RedisTransport", "RedisUnavailable", "load_scripts"]
