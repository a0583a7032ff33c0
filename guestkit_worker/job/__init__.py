"""The job document and its verdicts: protocol, decoding, admission checks, outcome documents,
job statuses and states, time stamps and the package's errors.  Imports nothing else of the package
but :mod:`guestkit_worker.settings.defaults`."""
