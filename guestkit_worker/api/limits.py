"""Fixed bounds of the REST API (a module of constants only; the bounds an operator sets have
their defaults in :mod:`guestkit_worker.settings.defaults`)."""

#: Longest ?wait= honoured, in seconds.
MAX_WAIT = 60.0
#: Largest and default ``limit`` of one page of GET /api/v1/jobs.
MAX_PAGE = 500
DEFAULT_PAGE = 100
#: Largest ``after`` of GET /api/v1/jobs/ID/progress: the largest index a store holds (Redis
#: reads events with LRANGE, whose start is a signed 64-bit number); the same on every transport.
MAX_PROGRESS_AFTER = 2**63 - 1
