"""Prometheus metrics of the gateway, correct across gunicorn's worker processes.

gunicorn runs several worker processes and a scrape reaches only one of them, so each worker writes its
samples to files in PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py before any worker starts) and
`/metrics` merges all of them with prometheus_client's `MultiProcessCollector`. Without that variable
(tests, a single process) the gateway's own registry is served directly.

Every series carries `service="gateway"` so dashboards can put it beside the nameko services.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from services.common.metrics import LATENCY_BUCKETS
from services.gateway.settings import METRICS_DIR

SERVICE = "gateway"
# Every label value comes from a fixed set (issue 12, item 10): a client chooses its method, so any other
# method is counted as "other" — 2 300 random methods once grew /metrics to 5.6 MB. Routes are the
# route table's paths or "unmatched" (app.py); statuses are three digits the gateway itself answers.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


def multiprocess_enabled() -> bool:
    return METRICS_DIR.get() is not None


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lianxiao_http_requests_total", "HTTP requests answered by the gateway",
            ["service", "route", "method", "status"], registry=self.registry,
        )
        self.duration = Histogram(
            "lianxiao_http_request_duration_seconds", "Time from request to response in the gateway",
            ["service", "route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "lianxiao_gateway_rpc_duration_seconds", "RPC calls from the gateway to the services",
            ["service", "target", "method", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.auth_lookups = Counter(
            "lianxiao_gateway_auth_cache_lookups_total", "Token lookups in the gateway's cache (hit or miss)",
            ["service", "result"], registry=self.registry,
        )
        self.rate_limited = Counter(
            "lianxiao_gateway_rate_limited_total", "Requests refused by the per-token rate limit",
            ["service"], registry=self.registry,
        )
        self.attempts_refused = Counter(
            "lianxiao_gateway_auth_attempts_refused_total",
            "Requests refused before token verification: too many token checks from one client address",
            ["service"], registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (SERVICE, route, method_label(method), status_label(status))
        self.requests.labels(*labels).inc()
        self.duration.labels(*labels).observe(seconds)

    def observe_rpc(self, target: str, method: str, outcome: str, seconds: float) -> None:
        self.rpc_duration.labels(SERVICE, target, method, outcome).observe(seconds)

    def observe_auth_lookup(self, result: str) -> None:
        self.auth_lookups.labels(SERVICE, result).inc()

    def observe_rate_limited(self, limit: str = "token") -> None:
        (self.attempts_refused if limit == "address" else self.rate_limited).labels(SERVICE).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text to serve on /metrics and its content type."""
        if multiprocess_enabled():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
