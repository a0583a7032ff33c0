"""The operating system's parts the worker uses: child processes and their orphans, atomic
writes, temp files, disk space, path policy, checksums.  Imports only :mod:`..job`."""
