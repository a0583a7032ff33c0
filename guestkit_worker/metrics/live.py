"""Metric families computed when scraped rather than updated as things happen.

* :class:`OptionalTimestamp` -- a gauge with no sample until it is first set, so a worker that
  has never completed a job has no ``last_success`` series (instead of 0, which dashboards
  show as "57 years ago" and ``time() - x > N`` alerts match);
* :class:`HealthChecks` -- ``guestkit_worker_health_check{check}``: 1 ok, 0 failing, one
  series per check that ``/health`` makes, so what makes ``/health`` answer 503 is visible
  to Prometheus too;
* :class:`OldestRunningJob` -- ``guestkit_worker_oldest_running_job_seconds``: how long the
  longest-running handler has been running (0 when none runs), so a stuck job shows up
  while it is stuck instead of only once it ends;
* :class:`ScanTotals` -- the vulnerability database's age and records and the scans' findings.

The owner injects the functions that read its state (``track(fn)``); nothing here calls back
into the worker on its own.
"""

import logging
import time
from typing import Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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


class ScanTotals(Collector):
    """The vulnerability scans' families, from a function returning a plain snapshot
    ``{"age_seconds": float | None, "records": {ecosystem: n}, "findings": {severity: n},
    "scans": n}`` (the owner reads the scanning library's counts; metrics imports none of it):

    * ``guestkit_vuln_db_age_seconds`` -- now minus the newest ``modified`` of the database the
      last scan (or the worker's refresh) opened; absent until one was opened, so a worker
      without a database is not mistaken for one with a fresh database;
    * ``guestkit_vuln_db_records{ecosystem}`` -- indexed records per ecosystem (the 32 largest;
      the rest summed as ``other``);
    * ``guestkit_scan_findings_total{severity}`` and ``guestkit_scans_total`` -- findings
      counted per scan, and scans.
    """

    def __init__(self, registry=None):
        self._fn: Optional[Callable[[], dict]] = None
        if registry is not None:
            registry.register(self)

    def track(self, snapshot: Callable[[], dict]) -> None:
        self._fn = snapshot

    def describe(self):
        return list(self._families({}))

    def collect(self):
        snapshot = {}
        if self._fn is not None:
            try:
                snapshot = self._fn()
            except Exception:  # a scrape must not fail because a count could not be read
                log.exception("vulnerability scan counts for /metrics failed")
        yield from self._families(snapshot)

    @staticmethod
    def _families(snapshot: dict):
        age = GaugeMetricFamily("guestkit_vuln_db_age_seconds",
                                "Seconds since the newest modified time of the vulnerability database's "
                                "records; absent until a database was opened.")
        if snapshot.get("age_seconds") is not None:
            age.add_metric([], snapshot["age_seconds"])
        records = GaugeMetricFamily("guestkit_vuln_db_records",
                                    "Records of the vulnerability database, by OSV ecosystem.",
                                    labels=["ecosystem"])
        for ecosystem, count in _bounded(snapshot.get("records", {})):
            records.add_metric([ecosystem], count)
        findings = CounterMetricFamily("guestkit_scan_findings",
                                       "Vulnerabilities found by scans, by severity (each scan's count).",
                                       labels=["severity"])
        for severity, count in snapshot.get("findings", {}).items():
            findings.add_metric([severity], count)
        scans = CounterMetricFamily("guestkit_scans", "Vulnerability scans run.")
        scans.add_metric([], snapshot.get("scans", 0))
        return age, records, findings, scans


#: ecosystems exported one by one; the records of the others are summed as ecosystem="other", so
#: a database naming thousands of ecosystems cannot grow the number of series
MAX_ECOSYSTEM_SERIES = 32


def _bounded(records: dict) -> list:
    """(ecosystem, records) of the MAX_ECOSYSTEM_SERIES largest, then ("other", the rest)."""
    ranked = sorted(records.items(), key=lambda item: (-item[1], item[0]))
    kept, rest = ranked[:MAX_ECOSYSTEM_SERIES], ranked[MAX_ECOSYSTEM_SERIES:]
    out = sorted(kept)
    if rest:
        out.append(("other", sum(count for _, count in rest)))
    return out
