"""LeanHistogram (the worker's hot-path histogram) exposes exactly what prometheus_client's
Histogram exposes for the same observations, and loses no observation under threads."""

import threading

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from guestkit_worker.metrics.families import DURATION_BUCKETS, QUEUE_WAIT_BUCKETS
from guestkit_worker.metrics.histogram import LeanHistogram

VALUES = [0.0, 0.3, 1.0, 1.0000001, 2.0, 5.5, 2048.0, 2049.0, 1e6, -1.0]


def _exposition(registry):
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_same_exposition_as_prometheus_client():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    lean = LeanHistogram("gk_test_seconds", "A test histogram.", ["op", "status"], buckets=DURATION_BUCKETS,
                         registry=ours)
    ref = Histogram("gk_test_seconds", "A test histogram.", ["op", "status"], buckets=DURATION_BUCKETS,
                    registry=theirs)
    plain = LeanHistogram("gk_wait_seconds", "Waits.", buckets=QUEUE_WAIT_BUCKETS, registry=ours)
    plain_ref = Histogram("gk_wait_seconds", "Waits.", buckets=QUEUE_WAIT_BUCKETS, registry=theirs)
    lean.labels("a", "never")  # a zero-initialised series is exposed too
    ref.labels("a", "never")
    for i, v in enumerate(VALUES):
        lean.labels("a", "ok" if i % 2 else "bad").observe(v)
        ref.labels("a", "ok" if i % 2 else "bad").observe(v)
        plain.observe(v * 100)
        plain_ref.observe(v * 100)
    expo = _exposition(ours)
    assert expo == _exposition(theirs)
    assert 'gk_test_seconds_bucket{le="+Inf",op="a",status="ok"} 5.0' in expo
    assert "gk_wait_seconds_count 10.0" in expo


def test_counts_and_threads():
    h = LeanHistogram("gk_threads_seconds", "x", ["k"], buckets=(1.0, 10.0))
    child = h.labels("v")

    def work():
        for i in range(20000):
            child.observe(i % 20)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert dict(h.counts()) == {("v",): 80000}
    samples = {(s.name, s.labels.get("le")): s.value for m in h.collect() for s in m.samples}
    assert samples[("gk_threads_seconds_bucket", "1.0")] == 4 * 20000 * 2 / 20  # values 0 and 1
    assert samples[("gk_threads_seconds_bucket", "+Inf")] == 80000
    assert samples[("gk_threads_seconds_sum", None)] == 4 * 1000 * sum(range(20))
