"""A whole platform on the tests' own broker and database: accounts, activities, a gunicorn gateway.

Services run as `python -m services.common.runner <name>` subprocesses (so they can be SIGKILLed),
each stack on its own vhost and its own databases, with the invented city of the gateway tests.
An audit queue bound to `activities.events` stands for the reporting side: it counts what a
subscriber would receive.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eventlet
from kombu import Connection, Queue, binding
from sqlalchemy import Engine, text

from services.common import migrations
from services.common.db import make_engine
from services.common.events import event_exchange
from tests.gateway.gateway_support import City, Gunicorn, build_city

from .infra import PostgresCluster, RabbitNode, ServiceProcess, wait_until

AUDIT_QUEUE = "lxrel.audit.activities"


@dataclass
class Delivered:
    """What the audit queue received: every delivery and the distinct event ids among them."""

    deliveries: int = 0
    ids: Counter[str] = field(default_factory=Counter)

    @property
    def distinct(self) -> int:
        return len(self.ids)

    @property
    def redelivered(self) -> int:
        return self.deliveries - self.distinct


class Stack:
    def __init__(self, broker: RabbitNode, postgres: PostgresCluster, workdir: Path,
                 services: tuple[str, ...] = ("accounts", "activities"), **gateway_env: str) -> None:
        self.broker = broker
        self.postgres = postgres
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:6]
        self.vhost = f"lxrel-{self.tag}"
        self.amqp_uri = broker.add_vhost(self.vhost)
        self.database_url = postgres.url(f"lxrel_{self.tag}_{{service}}")
        for service in services:
            migrations.upgrade(service, self.database_url.replace("{service}", service))
        self.engines: dict[str, Engine] = {}
        env = {**os.environ, "AMQP_URI": self.amqp_uri, "DATABASE_URL": self.database_url, "LOG_LEVEL": "INFO"}
        env.pop("METRICS_PORT", None)
        env["RELAY_JOIN_SECRETS"] = uuid.uuid4().hex  # the relay refuses to start without one
        env["LIANXIAO_SCOPE_SECRET"] = uuid.uuid4().hex  # as deployed: services accept only signed scopes
        self.services = {
            name: ServiceProcess(name, env, workdir / f"{name}.log") for name in services
        }
        self.gateway: Gunicorn | None = None
        self.gateway_env = {"GATEWAY_RATE_LIMIT_PER_SECOND": "1000", "GATEWAY_RATE_LIMIT_BURST": "1000",
                            "GATEWAY_AUTH_ATTEMPTS_PER_SECOND": "1000", "GATEWAY_AUTH_ATTEMPTS_BURST": "1000",
                            **gateway_env}
        self.city: City | None = None
        self.supervising = False

    def start(self) -> Stack:
        for service in self.services.values():
            service.start()
        self.declare_audit_queue()
        self.city = build_city(self.database_url.replace("{service}", "accounts"))
        # Activities learns teachers from accounts' events: wait until it knows the city's four.
        wait_until(lambda: self.scalar("activities", "SELECT count(*) FROM roster_teachers") >= 4, 30,
                   "activities to learn the roster")
        self.gateway = Gunicorn(self.amqp_uri, self.workdir / "gateway.log", **self.gateway_env)
        self.supervising = True
        eventlet.spawn_n(self.supervise)
        return self

    def supervise(self) -> None:
        """Restart services that exited by themselves, as the platform's supervisor would (until stop)."""
        while self.supervising:
            for service in self.services.values():
                with contextlib.suppress(TimeoutError):
                    service.revive()
            eventlet.sleep(0.5)

    @property
    def crashes(self) -> dict[str, int]:
        return {name: service.crashes for name, service in self.services.items() if service.crashes}

    def stop(self) -> None:
        self.supervising = False
        if self.gateway is not None:
            self.gateway.stop()
        for service in self.services.values():
            service.stop()
        for engine in self.engines.values():
            engine.dispose()

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def engine(self, service: str) -> Engine:
        if service not in self.engines:
            self.engines[service] = make_engine(self.database_url.replace("{service}", service))
        return self.engines[service]

    def scalar(self, service: str, sql: str) -> Any:
        with self.engine(service).connect() as connection:
            return connection.execute(text(sql)).scalar()

    def stored_ids(self) -> Counter[str]:
        with self.engine("activities").connect() as connection:
            return Counter(str(value) for value in connection.execute(text("SELECT id FROM activities")).scalars())

    def outbox_drained(self, timeout: float = 60) -> None:
        wait_until(lambda: self.scalar("activities", "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0,
                   timeout, "the activities outbox to drain")

    def declare_audit_queue(self) -> None:
        exchange = event_exchange("activities")
        queue = Queue(AUDIT_QUEUE, bindings=[binding(exchange, routing_key="bureau.*.activity.#")], durable=True,
                      auto_delete=False)
        with Connection(self.amqp_uri, connect_timeout=5) as connection:
            queue.maybe_bind(connection.default_channel)
            exchange.maybe_bind(connection.default_channel)
            exchange.declare()
            queue.declare()

    def drain_audit(self, expected: int, timeout: float = 60, quiet: float = 2.0) -> Delivered:
        """Read (and ack) the audit queue until `expected` distinct ids came and `quiet` s passed."""
        seen = Delivered()
        deadline = time.monotonic() + timeout
        last_message = time.monotonic()
        with Connection(self.amqp_uri, connect_timeout=5) as connection:
            queue = Queue(AUDIT_QUEUE, durable=True, auto_delete=False, channel=connection.channel())
            while time.monotonic() < deadline:
                message = queue.get(no_ack=False, accept=["application/json"])
                if message is None:
                    if seen.distinct >= expected and time.monotonic() - last_message > quiet:
                        break
                    time.sleep(0.05)
                    continue
                last_message = time.monotonic()
                seen.deliveries += 1
                seen.ids[message.properties.get("message_id") or message.headers.get("cloudEvents:id")] += 1
                message.ack()
        return seen


@contextlib.contextmanager
def running_stack(broker: RabbitNode, postgres: PostgresCluster, workdir: Path,
                  services: tuple[str, ...] = ("accounts", "activities"), **gateway_env: str) -> Any:
    stack = Stack(broker, postgres, workdir, services, **gateway_env)
    try:
        yield stack.start()
    finally:
        stack.stop()
