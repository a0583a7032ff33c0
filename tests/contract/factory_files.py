"""The file transport in the contract suite: a jobs and a results directory under tmp_path."""

import os

from guestkit_worker.transports.files import FileTransport

NAME = "files"


class FilesFactory:
    def __init__(self, base):
        self.jobs = os.path.join(str(base), "jobs")
        self.results = os.path.join(str(base), "results")

    def make(self, worker_id, *, max_job_bytes=1 << 20):
        return FileTransport(self.jobs, self.results, worker_id, max_job_bytes=max_job_bytes, durable=False,
                             poll_interval=0.05)

    def kill(self, transport):
        # a crash: the lock goes with the process, the processing dir and its files stay
        os.close(transport._lock_fd)
        transport._lock_fd = None

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
