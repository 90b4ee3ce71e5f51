"""Replay: a bureau's events since a time, delivered again into the bureau's own queue only.

For a subscriber that joined late or lost its queue (docs/events/asyncapi.yaml, "Replay"). A bureau
token asks through the gateway (`POST /v1/events/replay`); the bureau comes from the token. Each
service replays from its outbox (which keeps every published event):

- Which events: those of the token's bureau with `time >= since`, in their original order, that the
  queue's own bindings to `<service>.events` select. Only bindings that name the bureau
  (`bureau.<id>.…`) count, so a queue bound to other bureaus or to every bureau (`bureau.*.…`, `#`,
  the platform's own queues) gets nothing.
- How: a temporary topic exchange is bound to the queue with those same binding keys and each event is
  published to it with its live routing key, headers, properties and body, with publisher confirms;
  the broker's own topic matching picks what the queue receives, and no other queue sees anything.
  Only the delivery's exchange name differs (`lianxiao.replay.<service>.<random>`). The temporary
  exchange is deleted afterwards.
- Subscribers deduplicate on `cloudEvents:id`, so replaying what they already had is harmless.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import requests
from kombu import Connection, Exchange, Queue
from nameko.dependency_providers import Config
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.config import AMQP_URI, RABBITMQ_MANAGEMENT_URL, ManagementApi
from services.common.entrypoints import rpc
from services.common.errors import Forbidden, NotFound, ServiceUnavailable
from services.common.events import BUREAU_KEY_PREFIX, Outbox, event_exchange, outbox_message
from services.common.replay_schemas import ReplayIn
from services.common.scope import Scope
from services.common.validation import load

MANAGEMENT_TIMEOUT_SECONDS = 5.0


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more words."""
    return _match(pattern.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


class ReplayBroker(Protocol):
    def bindings(self, queue: str, exchange: str) -> list[str] | None:
        """The queue's binding keys from `exchange`; None when the queue does not exist."""

    def deliver(self, queue: str, keys: list[str], source: str
                ) -> contextlib.AbstractContextManager[Callable[[Mapping[str, Any]], None]]:
        """A publisher of `source`'s outbox rows into `queue` through a temporary exchange bound with `keys`."""


def replay(session: Session, outbox: Outbox, scope: Scope, data: Any, broker: ReplayBroker) -> dict[str, Any]:
    """Deliver the bureau's matching events since `since` into `queue`; what was sent and where it stopped."""
    values = load(ReplayIn(), data)
    if scope.kind != "bureau":
        raise Forbidden("Only a bureau token may replay the event stream.")
    exchange = event_exchange(outbox.service).name
    bound = broker.bindings(values["queue"], exchange)
    if bound is None:
        raise NotFound(f"Queue {values['queue']!r} does not exist; declare and bind it first.")
    own_prefix = f"{BUREAU_KEY_PREFIX}.{scope.bureau_id}."
    keys = sorted({key for key in bound if key.startswith(own_prefix)})
    outcome: dict[str, Any] = {"exchange": exchange, "bindings": keys, "republished": 0, "complete": True,
                               "last_event_time": None}
    if not keys:
        return outcome
    table = outbox.table
    rows = session.execute(
        select(table)
        .where(table.c.time >= values["since"].astimezone(UTC), table.c.published_at.is_not(None),
               table.c.routing_key.startswith(own_prefix, autoescape=True))
        .order_by(table.c.sequence)
    ).mappings()
    last_time: datetime | None = None
    with broker.deliver(values["queue"], keys, exchange) as publish:
        for row in rows:
            if not any(topic_matches(key, row["routing_key"]) for key in keys):
                continue
            if outcome["republished"] >= values["limit"]:
                outcome["complete"] = False
                break
            publish(dict(row))
            outcome["republished"] += 1
            last_time = row["time"]
    if last_time is not None:
        outcome["last_event_time"] = last_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return outcome


class RabbitReplayBroker:
    """Bindings from RabbitMQ's management API; delivery over AMQP with publisher confirms."""

    def __init__(self, amqp_uri: str, management_url: str | None = None) -> None:
        self.amqp_uri = amqp_uri
        api = ManagementApi.of(amqp_uri, management_url)
        self.vhost, self.auth, self.management_url = api.vhost, api.auth, api.base_url

    def bindings(self, queue: str, exchange: str) -> list[str] | None:
        queue_url = f"{self.management_url}/api/queues/{quote(self.vhost, safe='')}/{quote(queue, safe='')}"
        if self._get(queue_url) is None:
            return None
        found = self._get(f"{queue_url}/bindings")
        return None if found is None else [item["routing_key"] for item in found if item.get("source") == exchange]

    def _get(self, url: str) -> Any:
        """The JSON at `url`; None on 404."""
        try:
            response = requests.get(url, auth=self.auth, timeout=MANAGEMENT_TIMEOUT_SECONDS)
        except requests.RequestException as error:
            raise ServiceUnavailable("The broker's management API does not answer; retry later.") from error
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ServiceUnavailable(f"The broker's management API answered {response.status_code}; retry later.")
        return response.json()

    @contextlib.contextmanager
    def deliver(self, queue: str, keys: list[str], source: str) -> Iterator[Callable[[Mapping[str, Any]], None]]:
        exchange = Exchange(f"lianxiao.replay.{source}.{uuid.uuid4().hex[:12]}", type="topic", durable=False,
                            auto_delete=False)
        with Connection(self.amqp_uri, transport_options={"confirm_publish": True}) as connection:
            channel = connection.channel()
            bound_exchange = exchange(channel)
            bound_exchange.declare()
            try:
                target = Queue(queue, exchange=exchange, channel=channel, no_declare=True)
                for key in keys:
                    target.bind_to(exchange=exchange, routing_key=key)
                producer = connection.Producer(channel=channel)

                def publish(row: Mapping[str, Any]) -> None:
                    producer.publish(exchange=exchange, retry=False, **outbox_message(row))

                yield publish
            finally:
                with contextlib.suppress(Exception):  # the broker went away: nothing left to clean here
                    bound_exchange.delete()


class ReplayRpc:
    """Mix into a service that has a `db` and an `events = OutboxRelay(outbox)`: its `replay_events` RPC.

    Settings: AMQP_URI, and RABBITMQ_MANAGEMENT_URL (default `http://<broker host>:15672`, with the
    AMQP user's credentials) to read the queue's bindings.
    """

    db: Any
    events: Any
    replay_config = Config()

    @rpc
    def replay_events(self, scope: dict, data: dict) -> dict[str, Any]:
        """{"exchange", "bindings", "republished", "complete", "last_event_time"}; see this module's doc."""
        config = dict(self.replay_config)
        broker = RabbitReplayBroker(AMQP_URI.get(config), RABBITMQ_MANAGEMENT_URL.get(config))
        outbox = type(self).events.outbox  # the declared provider (the worker's attribute is its value)
        return replay(self.db, outbox, Scope.from_dict(scope), data, broker)
