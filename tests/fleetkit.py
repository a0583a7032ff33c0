"""Helpers shared by the fleet tests (tests/test_redis_fleet.py, tests/test_kafka_fleet.py): a
:class:`Fleet` of real worker processes of one pool, a labelled metric sum and the long-job
steps, so both transports' fleets are driven and checked the same way."""

import signal

from conftest import Dirs, wait_for
from faultkit import Worker, journal_job, plugin_env, read_runs
from metricskit import parse, scrape


def metric(w: Worker, name: str, **labels) -> float:
    """The sum of metric name over the series of w's /metrics whose labels include labels."""
    return sum(v for (n, ls), v in parse(scrape(w.url)).items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


class Fleet:
    """Worker processes of one pool, each with its own directories and worker id; args are the
    transport and pool options every worker of the fleet gets."""

    def __init__(self, tmp_path, args: list):
        self.tmp, self.args = tmp_path, list(args)
        self.env = plugin_env(tmp_path)
        self.workers: list = []

    def start(self, name: str, *extra) -> Worker:
        """Start worker name (listed before it runs, so stop_all stops it even if it never does)."""
        w = Worker(Dirs(self.tmp / name), "--worker-id", name, *self.args, *extra, env=self.env,
                   log_name=f"{name}.log")
        w.name = name
        self.workers.append(w)
        w.wait_running()
        return w

    def stop_all(self) -> None:
        for w in self.workers:
            w.ensure_stopped()


def long_job_taken(fleet: Fleet, t, journal, job_id: str, names: tuple) -> tuple:
    """Start worker names[0], submit an 8 s journal job through t, wait until it runs there, then
    start worker names[1] (which looks for work all along); the two Workers."""
    a = fleet.start(names[0])
    t.submit(journal_job(job_id, journal, seconds=8, execution={"max_attempts": 3}))
    wait_for(lambda: read_runs(journal), timeout=60, what="the job to start on worker a")
    return a, fleet.start(names[1])


def stop_past_lease(a: Worker, journal) -> None:
    """SIGSTOP worker a until a second run of the journal's job started elsewhere; then SIGCONT."""
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: len(read_runs(journal)) == 2, timeout=90, what="worker b to take the job over")
    finally:
        a.proc.send_signal(signal.SIGCONT)
