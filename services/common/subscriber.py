"""Consuming other services' events: CloudEvents headers in, each event applied once, bad ones kept.

`cloud_event_handler(source_service, routing_keys, processed=...)` declares a durable queue
`evt-<source>--<service>.<method>` bound to the exchange `<source>.events` with each event-type
pattern in every bureau (`bureau.*.<pattern>`). Handlers see `routing_key` as the event type, without
the bureau. Deduplication lives here, once for every consumer: the decorated method runs inside a
transaction of the service's database (`self.db`), and only for events whose id is not yet in the
service's `processed_events` table; the ids are recorded in that same transaction.

- `batch=1`: the method is called with `(body, attributes)` (the message's CloudEvents attributes
  `id`, `type`, `time`, ... plus `routing_key`).
- `batch=N`: the method is called with a list of up to N `ReceivedEvent`s, applied in one transaction;
  the consumer keeps a prefetch window of messages and acknowledges them only after that commit.

Failures:
- A message that can never be processed — a body that is not JSON, no event id, or a handler that
  raises `InvalidInput` — is re-published with its reason to the durable queue
  `<service>.dead-letter` (publisher confirms) and only then acknowledged: never dropped.
- An outage (database or broker unavailable) requeues the message after a short pause, however long.
- Any other error is retried a bounded number of times (`MAX_ATTEMPTS`), then dead-lettered with its
  reason: one poison message never blocks the queue. A failed batch is split in halves until the poison
  event is alone, so the good events of the batch are applied and only the poison one is set aside.

Longer than most files (~560 lines) on purpose: the single and batch consumers, deduplication and
dead-lettering share one acknowledge/retry protocol, which reads best in one place.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import eventlet
from eventlet.event import Event
from eventlet.queue import Empty, LightQueue
from eventlet.semaphore import Semaphore
from kombu import Connection, Exchange, Queue, binding
from nameko.exceptions import ContainerBeingKilled
from nameko.extensions import DependencyProvider
from nameko.messaging import Consumer, QueueConsumer
from sqlalchemy import Column, DateTime, MetaData, String, Table, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from services.common.config import amqp_uri, durable_queue_arguments
from services.common.errors import InvalidInput, ServiceUnavailable
from services.common.events import any_bureau, event_exchange, event_type_of, read_cloud_event_headers
from services.common.metrics import registry_for

log = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "x-lianxiao-dead-letter-reason"
REQUEUE_PAUSE_SECONDS = 1.0
# Attempts of one event before it is dead-lettered (errors that are not an outage: a bug, a value the
# database refuses). Deterministic failures fail fast, so three attempts cost milliseconds.
MAX_ATTEMPTS = 3
# Errors that say "not now" rather than "not this message": retried for as long as they last.
OUTAGES: tuple[type[BaseException], ...] = (ServiceUnavailable, OperationalError, InterfaceError, ConnectionError)


def is_outage(error: BaseException) -> bool:
    return isinstance(error, OUTAGES)


@dataclass
class ReceivedEvent:
    """One event as a handler sees it: the JSON body and the CloudEvents attributes (+ `routing_key`)."""

    body: dict[str, Any]
    attributes: dict[str, Any]
    message: Any = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return str(self.attributes["id"])

    @property
    def routing_key(self) -> str:
        return str(self.attributes.get("routing_key", ""))

    @property
    def type(self) -> str:
        return str(self.attributes.get("type") or self.routing_key)

    @property
    def time(self) -> datetime | None:
        """The event's time (when its fact was recorded), None when absent or unreadable."""
        try:
            moment = datetime.fromisoformat(str(self.attributes["time"]).replace("Z", "+00:00"))
        except (KeyError, ValueError):
            return None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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

    def new_events(self, session: Session, events: list[ReceivedEvent]) -> list[ReceivedEvent]:
        """The events not applied before (and each id once), marked processed in the caller's transaction."""
        unique: dict[str, ReceivedEvent] = {}
        for event in events:
            unique.setdefault(event.id, event)
        if not unique:
            return []
        seen = set(session.scalars(select(self.table.c.event_id).where(self.table.c.event_id.in_(list(unique)))))
        fresh = [event for event_id, event in unique.items() if event_id not in seen]
        if fresh:
            now = datetime.now(UTC)
            session.execute(self.table.insert(), [
                {"event_id": event.id, "type": event.type[:200], "processed_at": now} for event in fresh])
        return fresh


class DeadLetters:
    """Publishes copies of messages with their reason to a service's dead-letter queue, confirmed, over one
    connection kept open (a burst of poison messages must not cost a connection each)."""

    def __init__(self, uri: str, service: str, ssl: Any = None) -> None:
        self.uri, self.service, self.ssl = uri, service, ssl
        self.queue = Queue(dead_letter_queue_name(service), durable=True, auto_delete=False,
                           queue_arguments=durable_queue_arguments())
        self.connection: Connection | None = None
        self.lock = Semaphore(1)  # one connection, used by one greenthread at a time

    def publish(self, message: Any, reason: str) -> None:
        headers = dict(message.headers or {})
        headers[DEAD_LETTER_REASON_HEADER] = reason[:1000]
        delivery = getattr(message, "delivery_info", {}) or {}
        headers["x-lianxiao-original-exchange"] = str(delivery.get("exchange", ""))
        headers["x-lianxiao-original-routing-key"] = str(delivery.get("routing_key", ""))
        with self.lock:
            for attempt in range(2):  # a kept connection may have gone stale: one fresh one, then give up
                try:
                    if self.connection is None:
                        self.connection = Connection(self.uri, ssl=self.ssl,
                                                     transport_options={"confirm_publish": True})
                    self.connection.Producer().publish(
                        message.body, exchange="", routing_key=self.queue.name, declare=[self.queue],
                        headers=headers, content_type=message.content_type or "application/octet-stream",
                        content_encoding=message.content_encoding or "binary", delivery_mode=2,
                        retry=True, retry_policy={"max_retries": 5},
                    )
                    break
                except Exception:
                    self.close()
                    if attempt:
                        raise
        log.warning("%s dead-lettered a message (%s)", self.service, reason)

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.release()
            self.connection = None


def dead_letter(uri: str, service: str, message: Any, reason: str, *, ssl: Any = None) -> None:
    """Publish one copy of `message` with `reason` to the service's dead-letter queue, confirmed."""
    letters = DeadLetters(uri, service, ssl)
    try:
        letters.publish(message, reason)
    finally:
        letters.close()


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


class BatchQueueConsumer(DeadLetteringQueueConsumer):
    """A connection of its own with a wide prefetch window, for the batch handlers of a service."""

    prefetch_window = 1000

    @property
    def prefetch_count(self) -> int:
        return self.prefetch_window


class CloudEventHandler(Consumer):
    """An entrypoint for another service's events, called with `(body, cloud_event_attributes)`."""

    queue_consumer = DeadLetteringQueueConsumer()

    def __init__(self, source_service: str, routing_keys: Iterable[str] | str, **kwargs: Any) -> None:
        self.source_service = source_service
        self.routing_keys = [routing_keys] if isinstance(routing_keys, str) else list(routing_keys)
        self.attempts: Counter[str] = Counter()
        # Event times (Unix seconds) of messages received and not yet settled: the oldest is the lag.
        self.held_times: dict[int, float] = {}
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
        self.dead_letters = DeadLetters(self.uri, service, self.ssl)
        super().setup()

    def stop(self) -> None:
        super().stop()
        self.dead_letters.close()

    def kill(self) -> None:
        super().kill()
        self.dead_letters.close()

    def dead_letter(self, message: Any, reason: str) -> None:
        self.dead_letters.publish(message, reason)

    def received(self, body: Any, message: Any) -> ReceivedEvent | None:
        """The event in a message; None when the message was dead-lettered as unusable."""
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
            return None
        event = ReceivedEvent(dict(body), attributes, message)
        moment = event.time
        self.held_times[id(message)] = moment.timestamp() if moment is not None else time.time()
        return event

    def settle(self, event: ReceivedEvent, outcome: str, reason: str = "") -> None:
        """Acknowledge (`done`), dead-letter then acknowledge (`dead`), or give back (`requeue`)."""
        message = event.message
        if outcome == "dead":
            try:
                self.dead_letter(message, reason)
            except Exception:  # the broker refused the copy: keep the original instead
                log.exception("could not dead-letter; requeueing")
                outcome = "requeue"
        if outcome == "requeue":
            self.queue_consumer.requeue_message(message)
        else:
            self.attempts.pop(event.id, None)
            self.queue_consumer.ack_message(message)
        self.held_times.pop(id(message), None)

    def judge_failure(self, event: ReceivedEvent, error: BaseException) -> tuple[str, str]:
        """What to do with an event whose handler failed: ("requeue"|"retry"|"dead", reason)."""
        reason = f"{type(error).__name__}: {error}"
        if isinstance(error, InvalidInput):
            return "dead", reason
        if is_outage(error):
            return "requeue", reason
        self.attempts[event.id] += 1
        if self.attempts[event.id] >= MAX_ATTEMPTS:
            return "dead", f"{reason} (failed {self.attempts[event.id]} times)"[:1000]
        return "retry", reason

    def lag_seconds(self, now: float | None = None) -> float:
        """How far behind this consumer is: the age of the oldest event it holds unsettled (0 if none)."""
        held = list(self.held_times.values())
        return max(0.0, (now or time.time()) - min(held)) if held else 0.0

    def handle_message(self, body: Any, message: Any) -> None:
        event = self.received(body, message)
        if event is None:
            return
        # nameko's Consumer passes only the body; these handlers get the attributes as well.
        try:
            self.container.spawn_worker(
                self, (event.body, event.attributes), {},
                context_data=self.unpack_message_headers(message),
                handle_result=partial(self.handle_result, event),
            )
        except ContainerBeingKilled:
            self.settle(event, "requeue")

    def handle_result(self, event: ReceivedEvent, worker_ctx: Any, result: Any = None,
                      exc_info: Any = None) -> tuple[Any, Any]:
        if exc_info is None:
            self.settle(event, "done")
            return result, exc_info
        outcome, reason = self.judge_failure(event, exc_info[1])
        if outcome == "dead":
            self.settle(event, "dead", reason)
        else:
            log.warning("handler %s failed (%s); requeueing", self.method_name, reason)
            eventlet.sleep(REQUEUE_PAUSE_SECONDS if outcome == "requeue" else 0.05)
            self.settle(event, "requeue")
        return result, exc_info


class BatchCloudEventHandler(CloudEventHandler):
    """Many events per worker and transaction: messages gather in a prefetch window and are applied in
    batches of up to `batch_size`; each is acknowledged only after its batch committed."""

    queue_consumer = BatchQueueConsumer()
    linger_seconds = 0.02  # how long a partial batch waits for more messages once the queue has gone quiet

    def __init__(self, source_service: str, routing_keys: Iterable[str] | str, *, batch_size: int,
                 **kwargs: Any) -> None:
        self.batch_size = batch_size
        self.pending: list[ReceivedEvent] = []
        self.wakeup: LightQueue = LightQueue()
        self.running = False
        self.flusher: Any = None
        super().__init__(source_service, routing_keys, **kwargs)

    def start(self) -> None:
        super().start()
        self.running = True
        self.flusher = self.container.spawn_managed_thread(self._flush_loop, identifier=f"{self.method_name}.batches")

    def stop(self) -> None:
        self.running = False
        self.wakeup.put(None)
        if self.flusher is not None:
            self.flusher.wait()
        for event in self.pending:  # received but not applied: back to the queue for the next consumer
            self.settle(event, "requeue")
        self.pending = []
        super().stop()

    def kill(self) -> None:
        self.running = False
        if self.flusher is not None:
            self.flusher.kill()
        super().kill()

    def handle_message(self, body: Any, message: Any) -> None:
        event = self.received(body, message)
        if event is None:
            return
        self.pending.append(event)
        if len(self.pending) == 1:
            self.wakeup.put(None)

    def _flush_loop(self) -> None:
        while self.running:
            with contextlib.suppress(Empty):
                self.wakeup.get(timeout=1.0)
            if 0 < len(self.pending) < self.batch_size:
                eventlet.sleep(self.linger_seconds)  # a burst is arriving: let it fill the batch
            # While a batch is applied the next one gathers, so a busy queue gives full batches.
            while self.running and self.pending:
                batch, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
                self._apply(batch)
            while self.wakeup.qsize():
                self.wakeup.get_nowait()

    def _run(self, events: list[ReceivedEvent]) -> BaseException | None:
        """Run the handler once over `events` in a worker; the error it raised, or None."""
        finished: Event = Event()

        def handle_result(worker_ctx: Any, result: Any = None, exc_info: Any = None) -> tuple[Any, Any]:
            finished.send(exc_info[1] if exc_info is not None else None)
            return result, exc_info

        try:
            self.container.spawn_worker(self, (events,), {}, handle_result=handle_result)
        except ContainerBeingKilled as error:
            return error
        return finished.wait()

    def _apply(self, batch: list[ReceivedEvent]) -> None:
        error = self._run(batch)
        if error is None:
            for event in batch:
                self.settle(event, "done")
            return
        if isinstance(error, ContainerBeingKilled) or is_outage(error):
            log.warning("handler %s: batch of %d not applied (%s); requeueing", self.method_name, len(batch), error)
            eventlet.sleep(REQUEUE_PAUSE_SECONDS if is_outage(error) else 0)
            for event in batch:
                self.settle(event, "requeue")
            return
        if len(batch) == 1:
            self._apply_alone(batch[0], error)
            return
        # Something in the batch cannot be applied: halve it until the poison is alone, so the good events
        # are applied in a few transactions and only the poison is held (then retried, then set aside).
        log.warning("handler %s: batch of %d failed (%s); splitting it", self.method_name, len(batch), error)
        middle = len(batch) // 2
        self._apply(batch[:middle])
        self._apply(batch[middle:])

    def _apply_alone(self, event: ReceivedEvent, error: BaseException) -> None:
        while True:
            outcome, reason = self.judge_failure(event, error)
            if outcome == "dead":
                self.settle(event, "dead", reason)
                return
            if outcome == "requeue":
                eventlet.sleep(REQUEUE_PAUSE_SECONDS)
                self.settle(event, "requeue")
                return
            retried = self._run([event])
            if retried is None:
                self.settle(event, "done")
                return
            if isinstance(retried, ContainerBeingKilled):
                self.settle(event, "requeue")
                return
            error = retried


def cloud_event_handler(
    source_service: str,
    routing_keys: Iterable[str] | str,
    *,
    processed: ProcessedEvents,
    batch: int = 1,
    database: str = "db",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a handler of `source_service`'s events, applied once each inside a transaction of
    `self.<database>` (see the module's docstring)."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        if batch > 1:
            @functools.wraps(method)
            def apply_batch(self: Any, events: list[ReceivedEvent]) -> None:
                session = getattr(self, database)
                with session.begin():
                    fresh = processed.new_events(session, events)
                    if fresh:
                        method(self, fresh)

            return BatchCloudEventHandler.decorator(source_service, routing_keys, batch_size=batch)(apply_batch)

        @functools.wraps(method)
        def apply_one(self: Any, body: dict[str, Any], attributes: dict[str, Any]) -> None:
            session = getattr(self, database)
            with session.begin():
                if processed.first_time(session, str(attributes["id"]), str(attributes.get("type") or "")):
                    method(self, body, attributes)

        return CloudEventHandler.decorator(source_service, routing_keys)(apply_one)

    return decorate


class EventBacklog(DependencyProvider):
    """How many events wait for this service's handlers — ready in their queues plus received and not yet
    settled here — and how far behind they are (`lianxiao_projection_lag_seconds`: the age of the oldest
    event received and not yet applied).

    The dependency is a callable returning the count, or None when the broker cannot be asked.
    """

    cache_seconds = 0.25
    refresh_seconds = 5.0

    def setup(self) -> None:
        from prometheus_client import Gauge

        self.uri = self.container.config.get("AMQP_URI") or amqp_uri()
        self.ssl = self.container.config.get("AMQP_SSL")
        self.cached: tuple[float, int | None] = (0.0, None)
        registry = registry_for(self.container)
        labels = {"service": self.container.service_name}
        Gauge("lianxiao_projection_lag_seconds",
              "Age of the oldest received event not yet applied by this service's consumers (0: caught up)",
              ["service"], registry=registry).labels(**labels).set_function(self.lag_seconds)
        self.waiting_gauge = Gauge("lianxiao_events_waiting", "Events published to this service and not yet applied",
                                   ["service"], registry=registry).labels(**labels)

    def start(self) -> None:
        self.running = True
        self.container.spawn_managed_thread(self._refresh, identifier="event_backlog")

    def stop(self) -> None:
        self.running = False

    def handlers(self) -> list[CloudEventHandler]:
        return [entrypoint for entrypoint in self.container.entrypoints if isinstance(entrypoint, CloudEventHandler)]

    def lag_seconds(self) -> float:
        now = time.time()
        return max((handler.lag_seconds(now) for handler in self.handlers()), default=0.0)

    def waiting(self) -> int | None:
        taken, count = self.cached
        if time.monotonic() - taken < self.cache_seconds:
            return count
        handlers = self.handlers()
        try:
            with Connection(self.uri, ssl=self.ssl, connect_timeout=2) as connection:
                channel = connection.default_channel
                ready = sum(channel.queue_declare(queue=handler.queue.name, passive=True).message_count
                            for handler in handlers)
        except Exception as error:  # the broker is away or a queue is not declared yet: unknown, not zero
            log.info("could not count the events waiting for %s (%s)", self.container.service_name, error)
            count = None
        else:
            count = ready + sum(len(handler.held_times) for handler in handlers)
        self.cached = (time.monotonic(), count)
        return count

    def _refresh(self) -> None:
        while self.running:
            count = self.waiting()
            if count is not None:
                self.waiting_gauge.set(count)
            eventlet.sleep(self.refresh_seconds)

    def get_dependency(self, worker_ctx: Any) -> Callable[[], int | None]:
        return self.waiting
