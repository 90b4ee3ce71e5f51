"""Consuming other services' events: CloudEvents headers in, each event processed once, bad ones kept.

`cloud_event_handler(source_service, routing_keys)` declares a durable queue
`evt-<source>--<service>.<method>` bound to the exchange `<source>.events` with each event-type
pattern in every bureau (`bureau.*.<pattern>`), and calls the decorated method with
`(body, attributes)` where `attributes` are the message's CloudEvents attributes (`id`, `type`,
`time`, ...) plus `routing_key`: the event type, without the bureau.

- A message that can never be processed — a body that is not JSON, no event id, or a handler that
  raises `InvalidInput` — is re-published with its reason to the durable queue
  `<service>.dead-letter` (publisher confirms) and only then acknowledged: never dropped.
- Any other error (database down, broker hiccup) requeues the message after a short pause.
- Redelivery happens (a crash after commit, before ack): handlers record the event id with
  `ProcessedEvents.first_time` in the same transaction as their effect, so it happens once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import eventlet
from kombu import Connection, Exchange, Queue, binding
from nameko.exceptions import ContainerBeingKilled
from nameko.messaging import Consumer, QueueConsumer
from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.orm import Session

from services.common.config import amqp_uri, durable_queue_arguments
from services.common.errors import InvalidInput
from services.common.events import any_bureau, event_exchange, event_type_of, read_cloud_event_headers

log = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "x-lianxiao-dead-letter-reason"
REQUEUE_PAUSE_SECONDS = 1.0


def dead_letter_queue_name(service: str) -> str:
    return f"{service}.dead-letter"


class ProcessedEvents:
    """The ids of events a service has already applied (its consumers' deduplication)."""

    def __init__(self, metadata: MetaData) -> None:
        self.table = Table(
            "processed_events",
            metadata,
            Column("event_id", String(64), primary_key=True),
            Column("type", String(200), nullable=False),
            Column("processed_at", DateTime(timezone=True), nullable=False),
        )

    def first_time(self, session: Session, event_id: str, event_type: str) -> bool:
        """Mark the event processed in the caller's transaction; False if it already was.

        Two concurrent deliveries of one event both pass the check; the primary key then fails the
        second transaction, whose message is requeued and found processed on redelivery.
        """
        seen = session.execute(select(self.table.c.event_id).where(self.table.c.event_id == event_id)).first()
        if seen is not None:
            return False
        session.execute(
            self.table.insert().values(event_id=event_id, type=event_type[:200], processed_at=datetime.now(UTC))
        )
        return True


def dead_letter(
    uri: str, service: str, message: Any, reason: str, *, ssl: Any = None
) -> None:
    """Publish a copy of `message` with `reason` to the service's dead-letter queue, confirmed."""
    queue = Queue(dead_letter_queue_name(service), durable=True, auto_delete=False,
                  queue_arguments=durable_queue_arguments())
    headers = dict(message.headers or {})
    headers[DEAD_LETTER_REASON_HEADER] = reason[:1000]
    delivery = getattr(message, "delivery_info", {}) or {}
    headers["x-lianxiao-original-exchange"] = str(delivery.get("exchange", ""))
    headers["x-lianxiao-original-routing-key"] = str(delivery.get("routing_key", ""))
    with Connection(uri, ssl=ssl, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer()
        producer.publish(
            message.body,
            exchange="",
            routing_key=queue.name,
            declare=[queue],
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 5},
        )
    log.warning("%s dead-lettered a message (%s)", service, reason)


class DeadLetteringQueueConsumer(QueueConsumer):
    """nameko's queue consumer, except an undecodable body is dead-lettered instead of killing it."""

    def get_consumers(self, consumer_cls: Any, channel: Any) -> Any:
        consumers = super().get_consumers(consumer_cls, channel)
        for provider, consumer in self._consumers.items():
            consumer.on_decode_error = partial(self._undecodable, provider)
        return consumers

    def _undecodable(self, provider: CloudEventHandler, message: Any, error: Exception) -> None:
        provider.dead_letter(message, f"Undecodable body ({type(error).__name__}: {error})")
        self.ack_message(message)


class CloudEventHandler(Consumer):
    """An entrypoint for another service's events, called with `(body, cloud_event_attributes)`."""

    queue_consumer = DeadLetteringQueueConsumer()

    def __init__(self, source_service: str, routing_keys: Iterable[str] | str, **kwargs: Any) -> None:
        self.source_service = source_service
        self.routing_keys = [routing_keys] if isinstance(routing_keys, str) else list(routing_keys)
        super().__init__(queue=None, requeue_on_error=True, **kwargs)

    def setup(self) -> None:
        exchange: Exchange = event_exchange(self.source_service)
        service = self.container.service_name
        # Named after the handler, like nameko's own event handlers: renaming one leaves a queue behind.
        self.queue = Queue(
            f"evt-{self.source_service}--{service}.{self.method_name}",
            bindings=[binding(exchange, routing_key=any_bureau(key)) for key in self.routing_keys],
            durable=True,
            auto_delete=False,
            queue_arguments=durable_queue_arguments(),
        )
        self.uri = self.container.config.get("AMQP_URI") or amqp_uri()
        self.ssl = self.container.config.get("AMQP_SSL")
        super().setup()

    def dead_letter(self, message: Any, reason: str) -> None:
        dead_letter(self.uri, self.container.service_name, message, reason, ssl=self.ssl)

    def handle_message(self, body: Any, message: Any) -> None:
        attributes = read_cloud_event_headers(message.headers)
        # Not a CloudEvents attribute: the routing key the event arrived with, for handlers of several.
        attributes["routing_key"] = event_type_of((message.delivery_info or {}).get("routing_key", ""))
        problem = None
        if not attributes.get("id"):
            problem = "No cloudEvents:id header: the event cannot be deduplicated."
        elif not isinstance(body, Mapping):
            problem = f"The body is a JSON {type(body).__name__}, not an object."
        if problem is not None:
            self.dead_letter(message, problem)
            self.queue_consumer.ack_message(message)
            return
        # nameko's Consumer passes only the body; these handlers get the attributes as well.
        try:
            self.container.spawn_worker(
                self, (dict(body), attributes), {},
                context_data=self.unpack_message_headers(message),
                handle_result=partial(self.handle_result, message),
            )
        except ContainerBeingKilled:
            self.queue_consumer.requeue_message(message)

    def handle_message_processed(self, message: Any, result: Any = None, exc_info: Any = None) -> None:
        if exc_info is None:
            self.queue_consumer.ack_message(message)
        elif issubclass(exc_info[0], InvalidInput):
            try:
                self.dead_letter(message, f"{exc_info[0].__name__}: {exc_info[1]}")
            except Exception:  # the broker refused the copy: keep the original instead
                log.exception("could not dead-letter; requeueing")
                eventlet.sleep(REQUEUE_PAUSE_SECONDS)
                self.queue_consumer.requeue_message(message)
                return
            self.queue_consumer.ack_message(message)
        else:
            log.warning("handler %s failed (%s); requeueing", self.method_name, exc_info[1])
            eventlet.sleep(REQUEUE_PAUSE_SECONDS)
            self.queue_consumer.requeue_message(message)


cloud_event_handler = CloudEventHandler.decorator

