"""Helpers for the broker tests: publish as another service would, and read queues with a deadline."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from kombu import Connection, Exchange, Queue

from services.common.events import HEADER_PREFIX, SCHEMA_BASE, bureau_routing_key, event_exchange

DEFAULT_BUREAU = 31  # tests/activities/activity_fixtures.py's invented bureau


def publish_event(uri: str, service: str, routing_key: str, body: Any, *, event_id: str | None = None,
                  raw: bytes | None = None, with_id: bool = True, bureau_id: int | None = None) -> str:
    """Publish like a service's outbox relay: CloudEvents headers, JSON body, confirmed, routed to the
    bureau (`bureau_id`, else the body's, else the tests' invented bureau)."""
    if bureau_id is None:
        bureau_id = body.get("bureau_id", DEFAULT_BUREAU) if isinstance(body, dict) else DEFAULT_BUREAU
    event_id = event_id or str(uuid.uuid4())
    headers = {
        f"{HEADER_PREFIX}type": f"cn.lianxiao.{service}.{routing_key}",
        f"{HEADER_PREFIX}source": f"/lianxiao/{service}",
        f"{HEADER_PREFIX}specversion": "1.0",
        f"{HEADER_PREFIX}time": "2025-03-01T00:00:00Z",
        f"{HEADER_PREFIX}dataschema": f"{SCHEMA_BASE}/{service}/{routing_key.split('.')[0]}/v1.json",
        f"{HEADER_PREFIX}datacontenttype": "application/json",
    }
    if with_id:
        headers[f"{HEADER_PREFIX}id"] = event_id
    exchange = event_exchange(service)
    with Connection(uri, transport_options={"confirm_publish": True}) as connection:
        connection.Producer().publish(
            raw if raw is not None else json.dumps(body).encode(), exchange=exchange, declare=[exchange],
            routing_key=bureau_routing_key(bureau_id, routing_key), headers=headers, content_type="application/json",
            content_encoding="utf-8", delivery_mode=2,
        )
    return event_id


def declare_queue(uri: str, name: str, exchange: Exchange | None = None, keys: tuple[str, ...] = ()) -> Queue:
    queue = Queue(name, durable=True, auto_delete=False)
    with Connection(uri) as connection:
        channel = connection.channel()
        queue.maybe_bind(channel)
        queue.declare()
        for key in keys:
            assert exchange is not None
            exchange.maybe_bind(channel)
            exchange.declare()
            queue.bind_to(exchange=exchange, routing_key=key)
    return queue


def drain(uri: str, queue_name: str, count: int, timeout: float = 10.0) -> list[Any]:
    """Get (and ack) `count` messages from a queue, failing after `timeout` seconds."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    with Connection(uri) as connection:
        queue = Queue(queue_name, durable=True, auto_delete=False, channel=connection.channel())
        while len(messages) < count and time.monotonic() < deadline:
            message = queue.get(no_ack=False, accept=["application/json", "application/octet-stream"])
            if message is None:
                time.sleep(0.05)
                continue
            message.ack()
            messages.append(message)
    assert len(messages) == count, f"got {len(messages)} of {count} messages from {queue_name}"
    return messages


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.05) -> Any:
    """`condition()`'s first truthy value, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
