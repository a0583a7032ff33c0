"""Every exit status of guestkit-worker, by meaning (the man page's EXIT STATUS section and the
README list the same; tests/test_docs.py checks it).  A status belongs to a family of
commands, and one number may mean different things in different families (3, for example)."""

# -- run, api, validate, submit without --api or --wait ---------------------------------------
#: every job completed (or was a duplicate of a completed one); a daemon stopped cleanly; found
EXIT_OK = 0
#: --once: at least one job failed, timed out, was rejected or cancelled; validate: a file is
#: invalid; the job commands: the job failed or the document is invalid
EXIT_JOBS_FAILED = 1
#: usage or configuration error (bad flag or variable, port in use, unwritable directory)
EXIT_USAGE = 2
#: --once --textfile-dir: the run's metrics could not be written at the end (not a success)
EXIT_TEXTFILE = 3
#: Redis transport: another live process took this worker's --worker-id; the worker stopped
EXIT_WORKER_ID_TAKEN = 8
#: a second SIGTERM/SIGINT stopped the worker at once
EXIT_ABORTED = 130

# -- the job commands: status, result, list, cancel, submit --api / --wait --------------------
#: no such job (404)
EXIT_NOT_FOUND = 3
#: the job has not finished (result without --wait, or the wait ran out)
EXIT_NOT_FINISHED = 4
#: refused (409): the job already ended or is not cancellable, or its job id holds another document
EXIT_REFUSED = 5
#: the API or the job store is unavailable (connection, TLS, token, 5xx)
EXIT_UNAVAILABLE = 6
#: submit: the job store took the job but did not answer, so it may or may not be queued (submit
#: the same document again: it is never queued twice); also submit without --api over Redis
EXIT_OUTCOME_UNKNOWN = 7

# -- dead list, show, requeue, purge: 0, 2, 3 (no such dead letter), 5, 6 as the job commands ----
#: dead requeue: refused (409/422 NOT_REQUEUEABLE): the dead letter still cannot run (not JSON,
#: too large, no job id, a duplicate of another job); its reason is printed, the others go on
EXIT_DEAD_REFUSED = EXIT_REFUSED

# -- prune --------------------------------------------------------------------------------------
#: a file could not be removed (the others were)
EXIT_NOT_ALL_REMOVED = 1

# -- vulndb info -------------------------------------------------------------------------------
#: the database is unavailable: --vuln-db not set, not a directory, or no readable record
EXIT_VULNDB_UNAVAILABLE = 1
#: the database was read but is older than --vuln-db-max-age (scans would fail VULN_DB_STALE)
EXIT_VULNDB_STALE = 3

#: the statuses of run (and api, validate, plain submit), as the man page lists them
RUN_STATUSES = (EXIT_OK, EXIT_JOBS_FAILED, EXIT_USAGE, EXIT_TEXTFILE, EXIT_WORKER_ID_TAKEN, EXIT_ABORTED)
#: the statuses of the job commands
JOB_COMMAND_STATUSES = (EXIT_OK, EXIT_JOBS_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_NOT_FINISHED,
                        EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_OUTCOME_UNKNOWN)
#: the statuses of prune
PRUNE_STATUSES = (EXIT_OK, EXIT_NOT_ALL_REMOVED, EXIT_USAGE)
#: the statuses of vulndb info
VULNDB_STATUSES = (EXIT_OK, EXIT_VULNDB_UNAVAILABLE, EXIT_USAGE, EXIT_VULNDB_STALE)
#: the statuses of the dead commands
DEAD_STATUSES = (EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_DEAD_REFUSED, EXIT_UNAVAILABLE)
