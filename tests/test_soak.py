"""Soak: 20,000 no-op jobs through one worker (--max-concurrent 4) while /metrics is scraped
every 100 ms; memory stays flat after warm-up and no thread or file descriptor leaks.

Marked slow (still run in CI: `pytest -m slow`); bounded by pytest's timeout and by a stall check
(no job completed for 60 s), never by a count of scrapes against wall time.
"""

import os
import threading
import time

import pytest
from conftest import make_job, wait_for, write_job
from faultkit import Worker, archived, total, waiting
from metricskit import get, parse

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

N = 20_000
WARM_UP = 2_000
#: Largest accepted RSS growth from the end of warm-up to the end of the run.
MAX_RSS_GROWTH_KIB = 4 * 1024
BATCH = 250
MAX_WAITING = 1_000


class Scraper(threading.Thread):
    """GET /metrics every 100 ms (and /health every tenth time); keeps the latest counts."""

    def __init__(self, worker):
        super().__init__(name="scraper", daemon=True)
        self.worker = worker
        self.stop = threading.Event()
        self.scrapes = self.failures = 0
        self.completed = 0
        self.rss = []  # (completed, VmRSS KiB) per scrape
        self.errors = []

    def run(self):
        tick = time.monotonic()
        while True:
            tick += 0.1  # a fixed 100 ms cadence (a slow scrape is not followed by a full pause)
            if self.stop.wait(max(0.0, tick - time.monotonic())):
                break
            try:
                status, _, body = get(self.worker.url + "/metrics", timeout=5)
                samples = parse(body)
                if self.scrapes % 10 == 0:
                    assert get(self.worker.url + "/health", timeout=5)[0] == 200
                assert status == 200
                self.completed = total(samples, "guestkit_worker_jobs_total", status="completed")
                self.rss.append((self.completed, self.worker.rss_kib()))
            except Exception as exc:  # counted and reported; the test fails on any
                self.failures += 1
                self.errors.append(repr(exc))
            self.scrapes += 1


def test_soak_20000_jobs_flat_memory_no_leaks(dirs):
    w = Worker(dirs, "--worker-id", "soak", "--max-concurrent", "4", log_name="soak.log")
    scraper = Scraper(w)
    try:
        w.wait_running()
        threads0, fds0 = w.threads(), w.fds()  # before any HTTP connection exists
        assert get(w.url + "/health")[0] == 200
        scraper.start()
        started = time.monotonic()
        written = 0
        progress = (0, time.monotonic())  # (completed, when it last grew): a stall fails, slowness does not
        while written < N:  # keep at most MAX_WAITING jobs waiting: a steady state, not one big queue
            if scraper.completed > progress[0]:
                progress = (scraper.completed, time.monotonic())
            assert time.monotonic() - progress[1] < 60, (
                f"no job completed for 60 s ({scraper.completed} of {N})")
            if written - scraper.completed < MAX_WAITING:
                for i in range(written, min(written + BATCH, N)):
                    write_job(dirs.jobs, make_job(f"soak-{i:06d}", data={"i": i}))
                written = min(written + BATCH, N)
            else:
                time.sleep(0.02)
        wait_for(lambda: scraper.completed >= N, timeout=120, what=f"{N} completed")
        elapsed = time.monotonic() - started
        scraper.stop.set()
        scraper.join(timeout=10)
        # idle again: the connection threads of the last scrapes are gone
        wait_for(lambda: w.threads() == threads0, timeout=30, what=f"threads back to {threads0}")
        wait_for(lambda: w.fds() == fds0, timeout=30, what=f"fds back to {fds0}")
        s = w.samples()
        assert w.alive()
    finally:
        scraper.stop.set()
        w.stop()
    assert scraper.failures == 0, scraper.errors[:5]
    # what the soak is for: scraped all along (memory sampled through the run), every job done,
    # memory flat, nothing leaked -- not how many scrapes fit in the wall time of a busy machine
    assert scraper.scrapes >= 20, scraper.scrapes
    assert total(s, "guestkit_worker_jobs_total", status="completed") == N
    assert total(s, "guestkit_worker_jobs_total") == N
    assert total(s, "guestkit_worker_active_jobs") == 0 and total(s, "guestkit_worker_queue_depth") == 0
    assert len(archived(dirs, "done")) == N and waiting(dirs) == []
    assert sum(1 for n in os.listdir(dirs.results) if n.endswith("-result.json")) == N
    warm = [kib for done, kib in scraper.rss if done >= WARM_UP]
    assert len(warm) >= 10, f"only {len(warm)} memory samples after warm-up"
    growth = max(warm) - warm[0]
    print(f"soak: {N} jobs in {elapsed:.1f}s ({N / elapsed:.0f}/s), {scraper.scrapes} scrapes, "
          f"RSS after warm-up {warm[0]} KiB, max {max(warm)} KiB, end {warm[-1]} KiB, growth {growth} KiB, "
          f"threads {threads0}, fds {fds0}")
    assert growth < MAX_RSS_GROWTH_KIB, (warm[0], max(warm), warm[-1])
