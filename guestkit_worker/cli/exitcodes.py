"""Exit statuses of guestkit-worker (the man page's EXIT STATUS section lists them)."""

#: every job completed (or was a duplicate of a completed one); a daemon stopped cleanly
EXIT_OK = 0
#: --once: at least one job failed, timed out, was rejected or cancelled; validate: a file is invalid
EXIT_JOBS_FAILED = 1
#: usage or configuration error (bad flag, port in use, unwritable directory)
EXIT_USAGE = 2
#: --once --textfile-dir: the run's metrics could not be written at the end (not a success)
EXIT_TEXTFILE = 3
#: submit: the job store took the job but did not answer, so it may or may not be queued (submit the
#: same document again: it is never queued twice); the client commands' table (commands.py) shares it
EXIT_OUTCOME_UNKNOWN = 7
#: Redis transport: another live process took this worker's --worker-id; the worker stopped
EXIT_WORKER_ID_TAKEN = 8
#: a second SIGTERM/SIGINT stopped the worker at once
EXIT_ABORTED = 130
