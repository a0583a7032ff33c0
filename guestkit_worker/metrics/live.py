"""Metric families computed when scraped rather than updated as things happen.

* :class:`OptionalTimestamp` -- a gauge with no sample until it is first set, so a worker that
  has never completed a job has no ``last_success`` series (instead of 0, which dashboards
  show as "57 years ago" and ``time() - x > N`` alerts match);
* :class:`HealthChecks` -- ``guestkit_worker_health_check{check}``: 1 ok, 0 failing, one
  series per check that ``/health`` makes, so what makes ``/health`` answer 503 is visible
  to Prometheus too;
* :class:`OldestRunningJob` -- ``guestkit_worker_oldest_running_job_seconds``: how long the
  longest-running handler has been running (0 when none runs), so a stuck job shows up
  while it is stuck instead of only once it ends.

The owner injects the functions that read its state (``track(fn)``); nothing here calls back
into the worker on its own.
"""

import logging
import time
from typing import Callable, Optional

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: /metrics scraped by several Prometheus servers at once reuses one health evaluation this long
HEALTH_CACHE_SECONDS = 1.0


class _Registered(Collector):
    def __init__(self, name: str, documentation: str, registry=None):
        self.name, self.documentation = name, documentation
        if registry is not None:
            registry.register(self)

    def describe(self):
        return [GaugeMetricFamily(self.name, self.documentation)]


class OptionalTimestamp(_Registered):
    """A gauge whose only sample is ``value``, absent while ``value`` is None."""

    def __init__(self, name: str, documentation: str, registry=None):
        self.value: Optional[float] = None
        super().__init__(name, documentation, registry)

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation)
        value = self.value
        if value is not None:
            family.add_metric([], value)
        yield family


class HealthChecks(_Registered):
    """``NAME{check}`` from a function returning ``{check: ok}`` (evaluated at most once per
    HEALTH_CACHE_SECONDS)."""

    def __init__(self, name: str, documentation: str, registry=None):
        self._fn: Optional[Callable[[], dict[str, bool]]] = None
        self._cached = (0.0, {})
        super().__init__(name, documentation, registry)

    def describe(self):
        return [GaugeMetricFamily(self.name, self.documentation, labels=["check"])]

    def track(self, fn: Callable[[], dict[str, bool]]):
        self._fn = fn

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation, labels=["check"])
        if self._fn is not None:
            at, checks = self._cached
            now = time.monotonic()
            if not checks or now - at >= HEALTH_CACHE_SECONDS:
                try:
                    checks = self._fn()
                except Exception:  # a scrape must not fail because a check did: say it failed
                    log.exception("health checks for /metrics failed")
                    checks = {"health_checks": False}
                self._cached = (now, checks)
            for check, ok in sorted(checks.items()):
                family.add_metric([check], 1.0 if ok else 0.0)
        yield family


class OldestRunningJob(_Registered):
    """Seconds since the earliest start among running handlers, from a function returning the
    ``time.monotonic()`` start times."""

    def __init__(self, name: str, documentation: str, registry=None):
        self._fn: Callable[[], list] = list
        super().__init__(name, documentation, registry)

    def track(self, starts: Callable[[], list]):
        self._fn = starts

    def collect(self):
        family = GaugeMetricFamily(self.name, self.documentation)
        starts = self._fn()
        family.add_metric([], max(0.0, time.monotonic() - min(starts)) if starts else 0.0)
        yield family
