"""Prometheus metrics of the REST API, labelled by route template (never by job id)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

#: Methods kept as a label value; any other method is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ApiMetrics:
    """The API's collectors, registered in ``registry`` (the worker's, so one /metrics shows both)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.requests = Counter(
            "guestkit_api_requests_total", "REST API requests answered, by route template, method "
            "and HTTP status code", ["route", "method", "code"], registry=registry)
        self.duration = Histogram(
            "guestkit_api_request_duration_seconds", "Time from a REST API request's arrival to its "
            "answer, by route template (result?wait=... includes the wait)", ["route"],
            buckets=_BUCKETS, registry=registry)
        self.rejected = Counter(
            "guestkit_api_connections_rejected_total", "REST API connections refused at once (503, or "
            "closed on TLS) because --api-max-connections were all busy", registry=registry)
        self.waiting = Gauge(
            "guestkit_api_waiting_requests", "REST API requests waiting for a job's result "
            "(result?wait=...)", registry=registry)
        self.requeued = Counter(
            "guestkit_worker_dead_letters_requeued", "Dead letters queued again as new deliveries "
            "(dead requeue, POST /api/v1/dead/ENTRY/requeue)", registry=registry)
        self.purged = Counter(
            "guestkit_worker_dead_letters_purged", "Dead letters deleted for good (dead purge, "
            "DELETE /api/v1/dead/ENTRY)", registry=registry)
        self._children: dict = {}  # (route, method, code) -> (counter child, histogram child)

    def observe(self, route: str, method: str, code: int, seconds: float) -> None:
        """Count one answered request (the labelled children are looked up once per label set;
        the set is bounded: route templates x methods x status codes)."""
        key = (route, method if method in _METHODS else "other", code)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(key[0], key[1], str(code)),
                        self.duration.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

