"""The file transport in the contract suite: a jobs and a results directory under tmp_path."""

import os
import tempfile

from guestkit_worker.transports.files import FileTransport

NAME = "files"


class FilesFactory:
    def __init__(self, base):
        self.jobs = os.path.join(str(base), "jobs")
        self.results = os.path.join(str(base), "results")

    def make(self, worker_id, *, max_job_bytes=1 << 20, observer=None):
        return FileTransport(self.jobs, self.results, worker_id, max_job_bytes=max_job_bytes, durable=False,
                             poll_interval=0.05, observer=observer)

    def kill(self, transport):
        # what the others see of a crashed worker: its lock file no longer locked (the kernel
        # drops a dead process's flock), its processing dir and job files as they were.  The
        # lock of this living process cannot be dropped from outside, so its lock file is
        # replaced by one nobody locks, in one rename.
        processing = os.path.join(self.jobs, ".processing")
        fd, fresh = tempfile.mkstemp(prefix=".unlocked-", dir=processing)
        os.close(fd)
        os.replace(fresh, os.path.join(processing, transport.worker_id + ".lock"))

    def advance(self, seconds):
        pass  # no claim of the file transport runs out with time

    def lapse(self, transport):
        self.kill(transport)  # a claim lasts as long as the worker's lock: the lock is lost

    def break_store(self):
        # root ignores a read-only mode: the results directory is moved away and a regular file
        # takes its place, so every write below it fails (ENOTDIR) whoever the user is
        os.rename(self.results, self.results + ".away")
        with open(self.results, "wb"):
            pass

    def mend_store(self):
        os.unlink(self.results)
        os.rename(self.results + ".away", self.results)

    def inject_raw(self, data, name):
        os.makedirs(self.jobs, exist_ok=True)
        tmp = os.path.join(self.jobs, name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.rename(tmp, os.path.join(self.jobs, name + ".json"))

    def close(self):
        pass


def make_factory(request, tmp_path):
    return FilesFactory(tmp_path)
