"""Facts published only after they are committed: a transactional outbox and its relay.

A domain module adds an outbox row in the same transaction as the change it describes; the
`OutboxRelay` dependency publishes pending rows in batches with publisher confirms (one wait per
batch) and marks them sent. A crash
between commit and publish delays an event, never loses it; consumers deduplicate on the event id.

Messages go to the service's topic exchange `<service>.events` (the exchange nameko's own
`@event_handler` binds to) with the routing key as the event type, a JSON body, and the CloudEvents
attributes as AMQP application properties (`cloudEvents:<name>`, per the CloudEvents AMQP binding).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import eventlet
from amqp.exceptions import NotFound as QueueMissing
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
from services.common.errors import NotFound
from services.common.metrics import registry_for
from services.common.timeutil import as_utc, utcnow

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0"
HEADER_PREFIX = "cloudEvents:"
SCHEMA_BASE = "https://lianxiao.example/schemas/events"


def event_exchange(service: str) -> Exchange:
    return Exchange(f"{service}.events", type="topic", durable=True, auto_delete=False)


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


def read_cloud_event_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The CloudEvents attributes of a received message, without the AMQP prefix."""
    return {
        key[len(HEADER_PREFIX) :]: value
        for key, value in (headers or {}).items()
        if key.startswith(HEADER_PREFIX)
    }


@dataclass(frozen=True)
class OutboxEvent:
    """One event to add to an outbox: its routing key (the event type's tail) and body."""

    routing_key: str
    data: Mapping[str, Any]
    subject: str | None = None
    event_id: str | None = None
    time: datetime | None = None


class Outbox:
    """The outbox table of one service and the way domain code adds events to it."""

    def __init__(self, service: str, metadata: MetaData, schema_version: int = 1) -> None:
        self.service = service
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
        subject: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> str:
        """Queue an event inside the caller's transaction; returns its id."""
        return self.add_many(session, [OutboxEvent(routing_key, data, subject, event_id, time)])[0]

    def add_many(self, session: Session, events: list[OutboxEvent]) -> list[str]:
        """Queue many events in one INSERT inside the caller's transaction; returns their ids."""
        rows = [self._row(event) for event in events]
        if rows:
            session.execute(self.table.insert(), rows)
            self.added += len(rows)
        return [row["event_id"] for row in rows]

    def _row(self, event: OutboxEvent) -> dict[str, Any]:
        kind = event.routing_key.split(".")[0]
        return {
            "event_id": event.event_id or str(uuid.uuid4()),
            "routing_key": event.routing_key,
            "type": f"cn.lianxiao.{self.service}.{event.routing_key}",
            "source": self.source,
            "subject": event.subject,
            "dataschema": f"{SCHEMA_BASE}/{self.service}/{kind}/v{self.schema_version}.json",
            "time": event.time or utcnow(),
            "body": json.dumps(event.data, ensure_ascii=False, default=str),
            "attempts": 0,
        }

    def backlog(self, session: Session) -> int:
        query = select(func.count()).select_from(self.table).where(self.table.c.published_at.is_(None))
        return int(session.execute(query).scalar_one())


class OutboxRelay(DependencyProvider):
    """Publishes committed outbox rows with publisher confirms; wakes after each worker, polls otherwise."""

    batch_size = 500
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
        self.newest_gauge = Gauge(
            "lianxiao_events_newest_published_time_seconds",
            "Time (Unix seconds) of the newest event published from the outbox", ["service"], registry=registry,
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
                # No kombu `confirm_publish`: it waits for each message's confirm in turn. The relay puts
                # the channel in confirm mode itself and waits once per batch (`ConfirmedBatches`).
                with Connection(self.uri) as connection:
                    batches = ConfirmedBatches(connection)
                    backoff = 0.0
                    while self.running:
                        if self.publish_pending(batches) < self.batch_size:
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

    def publish_pending(self, batches: ConfirmedBatches) -> int:
        """Publish one batch in order and wait for the broker's confirms; returns how many were published.

        Rows are marked published only after every message of the batch is confirmed, in the same
        transaction that locked them: a crash or a nack leaves them pending, to be sent again (consumers
        deduplicate by event id).
        """
        table = self.outbox.table
        exchange = event_exchange(self.outbox.service)
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
            if rows:
                batches.publish(exchange, [
                    {
                        "body": row["body"].encode(), "routing_key": row["routing_key"],
                        "headers": cloud_event_headers(row), "message_id": row["event_id"], "type": row["type"],
                    }
                    for row in rows
                ])
                connection.execute(
                    update(table)
                    .where(table.c.sequence.in_([row["sequence"] for row in rows]))
                    .values(published_at=utcnow(), attempts=table.c.attempts + 1)
                )
            pending = connection.execute(
                select(func.count(), func.min(table.c.time)).where(table.c.published_at.is_(None))
            ).one()
        self.published_total.inc(len(rows))
        if rows:
            self.newest_gauge.set(max(as_utc(row["time"]) for row in rows).timestamp())
        self.backlog_gauge.set(pending[0])
        oldest = as_utc(pending[1])
        self.lag_gauge.set((utcnow() - oldest).total_seconds() if oldest else 0.0)
        return len(rows)


class PublishNotConfirmed(Exception):
    """The broker refused (nacked) a message, or did not confirm a batch in time."""


class ConfirmedBatches:
    """Publishes many persistent messages on one channel in confirm mode, then waits for all confirms.

    RabbitMQ confirms with `basic.ack` carrying the highest delivery tag it covers (`multiple`), so one
    round trip confirms a whole batch instead of one per message.
    """

    confirm_timeout_seconds = 10.0

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self.channel.confirm_select()
        self.producer = Producer(self.channel)
        self.declared: set[str] = set()
        self.published = 0  # delivery tags count from 1 per channel in confirm mode
        self.confirmed = 0
        self.refused = False
        self.channel.events["basic_ack"].add(self._acked)
        self.channel.events["basic_nack"].add(self._nacked)

    def _acked(self, delivery_tag: int, multiple: bool) -> None:
        self.confirmed = max(self.confirmed, delivery_tag)

    def _nacked(self, delivery_tag: int, multiple: bool) -> None:
        self.refused = True
        self.confirmed = max(self.confirmed, delivery_tag)

    def publish(self, exchange: Exchange, messages: list[dict[str, Any]]) -> None:
        if exchange.name not in self.declared:
            exchange(self.channel).declare()
            self.declared.add(exchange.name)
        for message in messages:
            self.producer.publish(
                message["body"], exchange=exchange, routing_key=message["routing_key"],
                headers=message["headers"], content_type="application/json", content_encoding="utf-8",
                message_id=message["message_id"], type=message["type"], delivery_mode=2, retry=False,
            )
            self.published += 1
        deadline = time.monotonic() + self.confirm_timeout_seconds
        while self.confirmed < self.published:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishNotConfirmed(f"{self.published - self.confirmed} messages not confirmed in time")
            self.connection.drain_events(timeout=remaining)
        if self.refused:
            raise PublishNotConfirmed("the broker refused a message of the batch")


class QueuePublisher(DependencyProvider):
    """Publishing straight to existing named queues (the default exchange), with publisher confirms.

    `with self.<name>() as publish:` opens one broker connection for a unit of work; `publish(queue, body,
    headers, properties)` refuses a queue that does not exist (`NotFound`) instead of losing messages.
    """

    def setup(self) -> None:
        self.uri = self.container.config.get("AMQP_URI") or amqp_uri()

    def get_dependency(self, worker_ctx: Any) -> Any:
        return partial(open_queue_publisher, self.uri)


QueuePublish = Callable[[str, bytes, Mapping[str, Any], Mapping[str, Any]], None]


@contextlib.contextmanager
def open_queue_publisher(uri: str) -> Iterator[QueuePublish]:
    with Connection(uri, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()
        checked: set[str] = set()

        def publish(queue: str, body: bytes, headers: Mapping[str, Any], properties: Mapping[str, Any]) -> None:
            if queue not in checked:
                try:
                    connection.default_channel.queue_declare(queue=queue, passive=True)
                except QueueMissing as error:
                    raise NotFound(f"Queue {queue!r} does not exist; declare and bind it first.") from error
                checked.add(queue)
            producer.publish(
                body, exchange="", routing_key=queue, headers=dict(headers),
                content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                message_id=properties["message_id"], type=properties["type"], retry=False,
            )

        yield publish
