"""The file transport: a jobs directory and a results directory shared by any number of
workers on one host or a shared file system (layout in :mod:`.layout`).

:class:`~.transport.FileTransport` composes separate parts, one module each, that use one
another only through their public methods: :mod:`.queue` (listing, claiming, retry, release,
archive), :mod:`.jobfile` (reading a claimed job file safely), :mod:`.claimed` (the names in a
worker's processing dir), :mod:`.jobids` (one running delivery per job id), :mod:`.liveness`
(the per-worker lock), :mod:`.reclaim` (taking over dead workers' job files), :mod:`.results`
(results and progress), :mod:`.idempotency` (idempotency records), :mod:`.index` (submit,
status and listing by job id) and :mod:`.cancels` (cancel requests of running jobs).
"""

from __future__ import annotations

from .queue import FileDelivery
from .transport import FileTransport

__all__ = ["FileTransport", "FileDelivery"]
