"""Facts published only after they are committed: a transactional outbox and its relay.

A domain module adds an outbox row in the same transaction as the change it describes; the
`OutboxRelay` dependency publishes pending rows with publisher confirms and marks them sent. A crash
between commit and publish delays an event, never loses it; consumers deduplicate on the event id.

Messages go to the service's topic exchange `<service>.events` (the exchange nameko's own
`@event_handler` binds to) with the routing key `bureau.<bureau id>.<event type>` (see
`bureau_routing_key`), a JSON body, and the CloudEvents attributes as AMQP application properties
(`cloudEvents:<name>`, per the CloudEvents AMQP binding).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import eventlet
from eventlet.queue import Empty, LightQueue
from kombu import Connection, Exchange, Producer
from nameko.extensions import DependencyProvider
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    update,
)
from sqlalchemy.orm import Session

from services.common.config import amqp_uri, database_url
from services.common.db import make_engine
from services.common.metrics import registry_for
from services.common.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0"
HEADER_PREFIX = "cloudEvents:"
SCHEMA_BASE = "https://lianxiao.example/schemas/events"


def event_exchange(service: str) -> Exchange:
    return Exchange(f"{service}.events", type="topic", durable=True, auto_delete=False)


# --- routing keys: the bureau first, so a broker user can be limited to its bureaus -----------------

BUREAU_KEY_PREFIX = "bureau"


def bureau_routing_key(bureau_id: int, event_type: str) -> str:
    """`bureau.<id>.<event type>`: RabbitMQ topic permissions (a regex on binding keys, see
    services/accounts/broker_users.py) can then allow a subscriber its own bureaus' events only."""
    return f"{BUREAU_KEY_PREFIX}.{int(bureau_id)}.{event_type}"


def any_bureau(event_pattern: str) -> str:
    """The binding key of an event-type pattern in every bureau (the platform's own consumers)."""
    return f"{BUREAU_KEY_PREFIX}.*.{event_pattern}"


def event_type_of(routing_key: str) -> str:
    """The event type of a routing key (`bureau.3.teacher.joined` → `teacher.joined`)."""
    prefix, _, rest = routing_key.partition(".")
    if prefix != BUREAU_KEY_PREFIX:
        return routing_key
    return rest.partition(".")[2]


def dataschema_url(service: str, schema: str, version: int) -> str:
    """`cloudEvents:dataschema`: the payload's schema, named as in docs/events/asyncapi.yaml."""
    return f"{SCHEMA_BASE}/{service}/{schema}/v{version}.json"


def cloud_event_headers(row: Mapping[str, Any]) -> dict[str, str]:
    headers = {
        "id": row["event_id"],
        "source": row["source"],
        "type": row["type"],
        "specversion": SPEC_VERSION,
        "time": row["time"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "subject": row["subject"],
        "dataschema": row["dataschema"],
        "datacontenttype": "application/json",
    }
    return {HEADER_PREFIX + name: value for name, value in headers.items() if value is not None}


def outbox_message(row: Mapping[str, Any]) -> dict[str, Any]:
    """How an outbox row goes on the wire (kombu `Producer.publish` arguments, exchange aside)."""
    return {
        "body": row["body"].encode(), "routing_key": row["routing_key"], "headers": cloud_event_headers(row),
        "content_type": "application/json", "content_encoding": "utf-8", "message_id": row["event_id"],
        "type": row["type"], "delivery_mode": 2,
    }


def read_cloud_event_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The CloudEvents attributes of a received message, without the AMQP prefix."""
    return {
        key[len(HEADER_PREFIX) :]: value
        for key, value in (headers or {}).items()
        if key.startswith(HEADER_PREFIX)
    }


class Outbox:
    """The outbox table of one service and the way domain code adds events to it."""

    def __init__(self, service: str, metadata: MetaData, schema_version: int = 1,
                 schemas: Mapping[str, str] | None = None) -> None:
        self.service = service
        # Payload schema by event type (or its first words); by default the event type's first word.
        self.schemas = dict(schemas or {})
        self.source = f"/lianxiao/{service}"
        # Counts events added in this process, so the relay wakes only after workers that wrote some.
        self.added = 0
        self.schema_version = schema_version
        self.table = Table(
            "outbox",
            metadata,
            Column("sequence", Integer, primary_key=True, autoincrement=True),
            Column("event_id", String(64), nullable=False, unique=True),
            Column("routing_key", String(200), nullable=False),
            Column("type", String(200), nullable=False),
            Column("source", String(200), nullable=False),
            Column("subject", String(200)),
            Column("dataschema", String(300)),
            Column("time", DateTime(timezone=True), nullable=False),
            Column("body", Text, nullable=False),
            Column("published_at", DateTime(timezone=True), index=True),
            Column("attempts", Integer, nullable=False, default=0),
        )

    def add(
        self,
        session: Session,
        routing_key: str,
        data: Mapping[str, Any],
        *,
        bureau_id: int,
        subject: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> str:
        """Queue an event (`routing_key`: its type, e.g. `teacher.joined`) of one bureau inside the
        caller's transaction; returns its id."""
        event_id = event_id or str(uuid.uuid4())
        session.execute(
            self.table.insert().values(
                event_id=event_id,
                routing_key=bureau_routing_key(bureau_id, routing_key),
                type=f"cn.lianxiao.{self.service}.{routing_key}",
                source=self.source,
                subject=subject,
                dataschema=dataschema_url(self.service, self.schema_of(routing_key), self.schema_version),
                time=time or utcnow(),
                body=json.dumps(data, ensure_ascii=False, default=str),
                attempts=0,
            )
        )
        self.added += 1
        return event_id

    def schema_of(self, event_type: str) -> str:
        words = event_type.split(".")
        for length in range(len(words), 0, -1):
            schema = self.schemas.get(".".join(words[:length]))
            if schema is not None:
                return schema
        return words[0]

    def backlog(self, session: Session) -> int:
        query = select(func.count()).select_from(self.table).where(self.table.c.published_at.is_(None))
        return int(session.execute(query).scalar_one())


class OutboxRelay(DependencyProvider):
    """Publishes committed outbox rows with publisher confirms; wakes after each worker, polls otherwise."""

    batch_size = 200
    poll_seconds = 0.5
    max_backoff_seconds = 5.0

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.wakeups: LightQueue = LightQueue()
        self.running = False
        self.added_seen = 0

    def setup(self) -> None:
        self.engine = make_engine(database_url(self.outbox.service, self.container.config))
        self.uri = self.container.config.get("AMQP_URI") or amqp_uri()
        registry = registry_for(self.container)
        from prometheus_client import Counter, Gauge

        labels = {"service": self.outbox.service}
        self.published_total = Counter(
            "lianxiao_events_published_total", "Events published from the outbox",
            ["service"], registry=registry,
        ).labels(**labels)
        self.failed_total = Counter(
            "lianxiao_events_publish_failed_total", "Outbox publish attempts that failed",
            ["service"], registry=registry,
        ).labels(**labels)
        self.backlog_gauge = Gauge(
            "lianxiao_outbox_backlog_events", "Committed events not yet published",
            ["service"], registry=registry,
        ).labels(**labels)
        self.lag_gauge = Gauge(
            "lianxiao_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event",
            ["service"], registry=registry,
        ).labels(**labels)

    def start(self) -> None:
        self.running = True
        self.container.spawn_managed_thread(self._run, identifier="outbox_relay")

    def stop(self) -> None:
        self.running = False
        self.wakeups.put(None)
        self.engine.dispose()

    def kill(self) -> None:
        self.stop()

    def worker_result(self, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> None:
        # Reads add no events: waking the relay after them cost a query per request for nothing.
        if exc_info is None and self.outbox.added != self.added_seen:
            self.added_seen = self.outbox.added
            self.wakeups.put(None)

    def _run(self) -> None:
        backoff = 0.0
        while self.running:
            try:
                with Connection(self.uri, transport_options={"confirm_publish": True}) as connection:
                    producer = Producer(connection)
                    backoff = 0.0
                    while self.running:
                        if self.publish_pending(producer) < self.batch_size:
                            self._wait()
            except Exception:  # the broker or the database went away: back off and reconnect
                if not self.running:
                    return  # stopping: the engine was disposed under us, nothing is wrong
                self.failed_total.inc()
                log.exception("outbox relay of %s failed; retrying", self.outbox.service)
                backoff = min(self.max_backoff_seconds, max(0.2, backoff * 2))
                eventlet.sleep(backoff)

    def _wait(self) -> None:
        with contextlib.suppress(Empty):
            self.wakeups.get(timeout=self.poll_seconds)
        while self.wakeups.qsize():
            self.wakeups.get_nowait()

    def publish_pending(self, producer: Producer) -> int:
        """Publish one batch in order; returns how many rows were published."""
        table = self.outbox.table
        exchange = event_exchange(self.outbox.service)
        published = 0
        with self.engine.begin() as connection:
            rows = (
                connection.execute(
                    select(table)
                    .where(table.c.published_at.is_(None))
                    .order_by(table.c.sequence)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
                .mappings()
                .all()
            )
            for row in rows:
                producer.publish(
                    row["body"].encode(),
                    exchange=exchange,
                    declare=[exchange],
                    routing_key=row["routing_key"],
                    headers=cloud_event_headers(row),
                    content_type="application/json",
                    content_encoding="utf-8",
                    message_id=row["event_id"],
                    type=row["type"],
                    delivery_mode=2,
                    retry=False,
                )
                connection.execute(
                    update(table)
                    .where(table.c.sequence == row["sequence"])
                    .values(published_at=utcnow(), attempts=table.c.attempts + 1)
                )
                published += 1
            pending = connection.execute(
                select(func.count(), func.min(table.c.time)).where(table.c.published_at.is_(None))
            ).one()
        self.published_total.inc(published)
        self.backlog_gauge.set(pending[0])
        oldest = pending[1]
        oldest = as_utc(oldest)
        self.lag_gauge.set((utcnow() - oldest).total_seconds() if oldest else 0.0)
        return published
