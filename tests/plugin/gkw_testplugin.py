"""Handlers used by the tests, discovered through the guestkit_worker.handlers entry point.

Put this directory on PYTHONPATH and the worker finds them like any third-party plugin.
"""

import os
import sys
import time

from guestkit_worker.handlers.base import Handler, HandlerResult
from guestkit_worker.job.errors import HandlerError, JobValidationError


class _Test(Handler):
    def __init__(self):
        self.payload_types = (self.name + ".v1",)
        self.operations = (self.name,)


class SleepHandler(_Test):
    """Waits payload.seconds, honouring cancellation; reports when it ran.  With
    payload.journal, appends "start JOB PID" and "end JOB PID" lines to that file (one write
    each, O_APPEND: lines of concurrent runs in several processes interleave whole)."""
    name = "test.sleep"

    def execute(self, context, data):
        start = time.time()
        journal = data.get("journal")
        if journal:
            _journal(journal, f"start {context.job.job_id} {os.getpid()}")
        try:
            if context.cancel_event.wait(float(data.get("seconds", 0))):
                context.check_cancelled()
        finally:
            if journal:
                _journal(journal, f"end {context.job.job_id} {os.getpid()}")
        return HandlerResult(data={"start": start, "end": time.time(), "pid": os.getpid()})


def _journal(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class ChildHandler(_Test):
    """Starts a long child through the context (optionally one that ignores SIGTERM)."""
    name = "test.child"

    def execute(self, context, data):
        script = "import time,sys\n"
        if data.get("ignore_sigterm"):
            script += "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        if data.get("grandchild_pid_file"):  # a grandchild in the child's session, as qemu under libguestfs
            script += ("import subprocess; g = subprocess.Popen(['sleep', '600']); "
                       f"open({data['grandchild_pid_file']!r}, 'w').write(str(g.pid))\n")
        script += "time.sleep(600)\n"
        pid_file = data["pid_file"]

        def started(line):
            pass
        argv = [sys.executable, "-c",
                f"import os; open({pid_file!r}, 'w').write(str(os.getpid()))\n" + script]
        context.run(argv, on_stdout_line=started)
        return HandlerResult(data={"unreachable": True})


class HangHandler(_Test):
    """Ignores cancellation: sleeps payload.seconds whatever happens."""
    name = "test.hang"

    def execute(self, context, data):
        time.sleep(float(data.get("seconds", 5)))
        return HandlerResult(data={"woke": True})


class RaiseHandler(_Test):
    """Raises a plain exception (a handler bug), or with payload.field a JobValidationError
    (what a handler's re-check finds when, say, an image vanished after admission)."""
    name = "test.raise"

    def execute(self, context, data):
        if "field" in data:
            raise JobValidationError(data["field"], data.get("message", "boom"), code=data.get("code"))
        raise RuntimeError(data.get("message", "boom"))


class FlakyHandler(_Test):
    """Fails recoverably until the job's attempt reaches payload.succeed_on."""
    name = "test.flaky"

    def execute(self, context, data):
        if context.job.attempt < int(data.get("succeed_on", 2)):
            raise HandlerError("FLAKY", f"attempt {context.job.attempt} fails on purpose", recoverable=True)
        return HandlerResult(data={"attempt": context.job.attempt})


class BadResultHandler(_Test):
    """Returns data that JSON cannot hold."""
    name = "test.badresult"

    def execute(self, context, data):
        return HandlerResult(data={"value": object()})


class VulnScanHandler(_Test):
    """Scans payload.packages ([name, version, source, source_version, kind] each) of a guest in
    payload.ecosystem against the worker's --vuln-db, as a scanning handler does: it keeps what
    configure_vulns hands it and calls only open_database and scan."""
    name = "test.vulnscan"
    vuln_db = None
    vuln_max_age = None

    def configure_vulns(self, db_dir, max_age_seconds):
        self.vuln_db, self.vuln_max_age = db_dir, max_age_seconds

    def execute(self, context, data):
        from guestkit_worker.vulns import scanning
        from guestkit_worker.vulns.model import GuestOS, InstalledPackage
        database = scanning.open_database(self.vuln_db, self.vuln_max_age)
        guest = GuestOS("debian", "12", ecosystem=data.get("ecosystem"))
        packages = [InstalledPackage(*p) for p in data.get("packages", [])]
        report = scanning.scan(database, guest, packages)
        return HandlerResult(data={"summary": report["summary"], "database": report["database"],
                                   "ids": [v["id"] for v in report["vulnerabilities"]],
                                   "max_age": self.vuln_max_age, "indexed_at": database.indexed_at})
