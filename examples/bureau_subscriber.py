#!/usr/bin/env python3
"""A bureau's subscriber to lianxiao's activity events (see docs/events/asyncapi.yaml).

    pip install kombu
    python examples/bureau_subscriber.py --amqp-uri amqp://user:pass@rabbitmq.lianxiao.example:5672/ \
        --queue bureau-b.activities --bind 'activity.recorded.*' --bind 'activity.hidden.*'

With the broker user the platform team made for you (`python -m services.common.broker_permissions`),
name the queue `subscriber.<your name>.<anything>` and add `--passive-exchange`: that user may read
the event exchanges but not declare them.

- Declares a durable queue (it keeps events while this script is not running) bound to the topic
  exchange `activities.events` with the routing keys you choose.
- Acknowledges each message only after it is handled (a crash means redelivery, not loss).
- Deduplicates on the `cloudEvents:id` header, remembered in a small SQLite file, so a redelivery or
  a replay prints nothing twice.
- Prints one JSON line per new event: id, type, routing key and the xAPI statement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from typing import Any

from kombu import Connection, Consumer, Exchange, Queue, binding


class SeenEvents:
    """The event ids already handled, kept on disk across restarts."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, seen_at REAL)")

    def first_time(self, event_id: str) -> bool:
        try:
            with self.db:
                self.db.execute("INSERT INTO seen VALUES (?, ?)", (event_id, time.time()))
        except sqlite3.IntegrityError:
            return False
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Print lianxiao activity events exactly once.")
    parser.add_argument("--amqp-uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--exchange", default="activities.events")
    parser.add_argument("--queue", required=True, help="your durable queue's name")
    parser.add_argument("--bind", action="append", dest="routing_keys",
                        help="routing key pattern (repeatable; default activity.recorded.*)")
    parser.add_argument("--passive-exchange", action="store_true",
                        help="only check that the exchange exists (a subscriber user may not declare it)")
    parser.add_argument("--seen-db", default="bureau_subscriber_seen.sqlite3", help="deduplication file")
    parser.add_argument("--max-messages", type=int, default=0, help="stop after this many (0: run forever)")
    parser.add_argument("--idle-exit", type=float, default=0, help="stop after this many idle seconds (0: never)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, out: Any = sys.stdout) -> int:
    """Consume until stopped; returns how many new events were printed."""
    exchange = Exchange(args.exchange, type="topic", durable=True, passive=args.passive_exchange)
    keys = args.routing_keys or ["activity.recorded.*"]
    queue = Queue(args.queue, bindings=[binding(exchange, routing_key=key) for key in keys],
                  durable=True, auto_delete=False)
    seen = SeenEvents(args.seen_db)
    printed = 0
    handled = 0

    def handle(body: Any, message: Any) -> None:
        nonlocal printed, handled
        headers = message.headers or {}
        event_id = headers.get("cloudEvents:id") or message.properties.get("message_id")
        if event_id and seen.first_time(str(event_id)):
            print(json.dumps({
                "id": event_id,
                "type": headers.get("cloudEvents:type"),
                "routing_key": message.delivery_info.get("routing_key"),
                "statement": body,
            }, ensure_ascii=False), file=out, flush=True)
            printed += 1
        message.ack()  # only now: what was printed is also remembered
        handled += 1

    with (
        Connection(args.amqp_uri, heartbeat=30) as connection,
        Consumer(connection, queues=[queue], callbacks=[handle], accept=["application/json"], prefetch_count=50),
    ):
        idle_since = time.monotonic()
        while not (args.max_messages and handled >= args.max_messages):
            try:
                connection.drain_events(timeout=1)
                idle_since = time.monotonic()
            except TimeoutError:
                connection.heartbeat_check()
                if args.idle_exit and time.monotonic() - idle_since >= args.idle_exit:
                    break
    return printed


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run(parse_args())
