"""Job transports: the interface in :mod:`.base`; the file transport in :mod:`.files`; the
Redis Streams transport in :mod:`.redis` (needs the ``redis`` extra)."""
