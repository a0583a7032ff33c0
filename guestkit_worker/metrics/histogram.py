"""A lean Prometheus histogram family for the per-job hot path.

prometheus_client's ``Histogram.observe()`` takes two locks (the sum, then the bucket) and
walks the bucket bounds in Python.  A job records three observations, so the worker uses this
collector instead: one lock per labelled child, the bucket found by ``bisect`` (C), and the
cumulative buckets computed only when scraped.  The exposition is the same as
prometheus_client's for a histogram (``NAME_bucket{…, le}``, ``NAME_count``, ``NAME_sum``; no
``_created`` series, which the worker disables anyway).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

INF = float("inf")


class HistogramChild:
    """One labelled series: per-bucket (not cumulative) counts and the sum, under one lock."""

    __slots__ = ("_bounds", "_counts", "_sum", "_lock")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Record one value (in the first bucket whose upper bound is >= value)."""
        i = bisect_left(self._bounds, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list, float]:
        """(per-bucket counts, sum), consistent with each other."""
        with self._lock:
            return list(self._counts), self._sum


class LeanHistogram(Collector):
    """A histogram family ``name`` with ``labelnames`` (possibly none) and upper ``buckets``
    (+Inf added); ``labels(*values)`` returns a child whose ``observe`` the caller caches."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Iterable[float], registry=None) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != INF:
            bounds.append(INF)
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(bounds)
        self._le = [floatToGoString(b) for b in bounds]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        self._lock = threading.Lock()
        self._plain: HistogramChild | None = None if self.labelnames else self.labels()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, HistogramChild(self._bounds))
        return child

    def observe(self, value: float) -> None:
        """Observe on the family without labels."""
        self._plain.observe(value)

    def counts(self) -> Iterator[tuple[tuple[str, ...], int]]:
        """(label values, number of observations) of every series."""
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            counts, _sum = child.snapshot()
            yield key, sum(counts)

    def describe(self) -> list:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            counts, total = child.snapshot()
            cumulative, running = [], 0
            for le, c in zip(self._le, counts):
                running += c
                cumulative.append((le, running))
            family.add_metric(list(key), cumulative, total)
        yield family
