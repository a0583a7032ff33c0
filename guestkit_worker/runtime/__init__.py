"""The worker process: the consumer and job threads (:mod:`.worker`), one job's intake,
execution and commit, recovery of dead workers' jobs, the watchdog, leases, the run table,
the handler context and the configuration."""
