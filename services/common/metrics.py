"""Prometheus metrics for nameko services, served on their own port so scrapes never take a worker.

Each container gets its own `CollectorRegistry` (a test may start the same service twice; the global
registry would refuse the second set of metrics). Extensions register their metrics on
`registry_for(container)`; `ServiceMetrics` times every entrypoint and serves the registry.
"""

from __future__ import annotations

import time
from typing import Any

from nameko.extensions import DependencyProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.common.config import METRICS_ADDR, metrics_port

REGISTRY_ATTRIBUTE = "lianxiao_metrics_registry"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def registry_for(container: Any) -> CollectorRegistry:
    # Kept on the container itself (extensions hold only a weak proxy to it, which cannot be a dict key).
    registry = getattr(container, REGISTRY_ATTRIBUTE, None)
    if registry is None:
        registry = CollectorRegistry()
        setattr(container, REGISTRY_ATTRIBUTE, registry)
    return registry


class ServiceMetrics(DependencyProvider):
    """Counts and times every entrypoint of the service; serves /metrics on METRICS_PORT."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.started_at: dict[Any, float] = {}
        self.server: Any = None
        self.port: int | None = None

    def setup(self) -> None:
        registry = registry_for(self.container)
        self.requests = Counter(
            "lianxiao_entrypoint_requests_total",
            "Entrypoint calls (RPC, events, timers) by outcome",
            ["service", "entrypoint", "kind", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "lianxiao_entrypoint_duration_seconds",
            "Entrypoint duration",
            ["service", "entrypoint", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "lianxiao_entrypoint_in_flight", "Workers running now", ["service"], registry=registry
        )
        self.up = Gauge("lianxiao_service_up", "1 while the service runs", ["service"], registry=registry)

    def start(self) -> None:
        port = metrics_port(self.service, self.container.config)
        if port is not None:
            self.server, _thread = start_http_server(
                port, addr=METRICS_ADDR.get(),
                registry=registry_for(self.container),
            )
            self.port = self.server.server_port
        self.up.labels(self.service).set(1)

    def stop(self) -> None:
        if hasattr(self, "up"):
            self.up.labels(self.service).set(0)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> CollectorRegistry:
        return registry_for(self.container)

    def worker_setup(self, worker_ctx: Any) -> None:
        self.started_at[worker_ctx] = time.perf_counter()
        self.in_flight.labels(self.service).inc()

    def worker_result(self, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> None:
        started = self.started_at.pop(worker_ctx, None)
        self.in_flight.labels(self.service).dec()
        entrypoint = worker_ctx.entrypoint
        name = entrypoint.method_name
        kind = type(entrypoint).__name__.lower()
        outcome = "ok" if exc_info is None else exc_info[0].__name__
        self.requests.labels(self.service, name, kind, outcome).inc()
        if started is not None:
            self.duration.labels(self.service, name, kind).observe(time.perf_counter() - started)
