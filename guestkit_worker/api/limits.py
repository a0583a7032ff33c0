"""Default bounds of the REST API (a module of constants only, cheap for the command line)."""

#: --api-max-connections: connections served at once; one more is answered 503 at once.
DEFAULT_MAX_CONNECTIONS = 64
#: --api-max-waits: requests waiting for a result (result?wait=) at once; one more gets 503.
DEFAULT_MAX_WAITS = 32
#: Longest ?wait= honoured, in seconds.
MAX_WAIT = 60.0
#: Largest and default ``limit`` of one page of GET /api/v1/jobs.
MAX_PAGE = 500
DEFAULT_PAGE = 100
#: Largest ``after`` of GET /api/v1/jobs/ID/progress: the largest index a store holds (Redis
#: reads events with LRANGE, whose start is a signed 64-bit number); the same on every transport.
MAX_PROGRESS_AFTER = 2**63 - 1
