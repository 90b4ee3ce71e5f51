#!/usr/bin/env python3
"""A bureau's subscriber to lianxiao's activity events (see docs/events/asyncapi.yaml and the README).

    pip install kombu
    python examples/bureau_subscriber.py \\
        --amqp-uri amqp://hexi-sub:PASSWORD@rabbitmq.lianxiao.example:5672/lianxiao \\
        --bureau 3 --queue hexi-sub.activities --bind 'activity.recorded.*' --bind 'activity.hidden.*' \\
        --gateway https://api.lianxiao.example --token "$BUREAU_TOKEN" --replay-since 2026-11-01T00:00:00+08:00

- Uses the broker user the city's operator made for the bureau (`lianxiao-admin broker-user-create`):
  its queues are named `<user>.<anything>` and may bind only `bureau.<your bureau>.…` routing keys.
- Declares a durable queue (it keeps events while this script is not running) bound to the topic
  exchange `activities.events` with `bureau.<bureau>.<pattern>` for each `--bind` pattern. The exchange
  is the platform's: it is never declared here (the broker user may not).
- With `--replay-since`, asks the gateway to deliver the bureau's events since then into the queue
  (`POST /v1/events/replay`): they arrive like live ones, with the same routing keys and headers.
- Acknowledges each message only after it is handled (a crash means redelivery, not loss).
- Deduplicates on the `cloudEvents:id` header, remembered in a small SQLite file, so a redelivery or
  a replay prints nothing twice.
- Prints one JSON line per new event: id, type, routing key, event type and the xAPI statement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
import urllib.request
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
    parser.add_argument("--bureau", type=int, required=True, help="your bureau's id (routing keys start bureau.<id>.)")
    parser.add_argument("--queue", required=True, help="your durable queue's name: <broker user>.<anything>")
    parser.add_argument("--bind", action="append", dest="patterns",
                        help="event type pattern (repeatable; default activity.recorded.*)")
    parser.add_argument("--seen-db", default="bureau_subscriber_seen.sqlite3", help="deduplication file")
    parser.add_argument("--gateway", help="the platform's API, for --replay-since")
    parser.add_argument("--token", help="a bureau API token, for --replay-since")
    parser.add_argument("--replay-since", help="first ask for the bureau's events since this time (ISO 8601)")
    parser.add_argument("--max-messages", type=int, default=0, help="stop after this many (0: run forever)")
    parser.add_argument("--idle-exit", type=float, default=0, help="stop after this many idle seconds (0: never)")
    return parser.parse_args(argv)


def request_replay(args: argparse.Namespace) -> dict[str, Any]:
    """POST /v1/events/replay: the bureau comes from the token; what the queue binds is what comes."""
    body = json.dumps({"queue": args.queue, "since": args.replay_since, "exchanges": [args.exchange]}).encode()
    request = urllib.request.Request(
        f"{args.gateway.rstrip('/')}/v1/events/replay", data=body, method="POST",
        headers={"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=90) as response:
        return json.loads(response.read())


def event_type(routing_key: str) -> str:
    """`bureau.3.activity.recorded.blog_post` → `activity.recorded.blog_post`."""
    return routing_key.split(".", 2)[2] if routing_key.startswith("bureau.") else routing_key


def run(args: argparse.Namespace, out: Any = sys.stdout) -> int:
    """Consume until stopped; returns how many new events were printed."""
    exchange = Exchange(args.exchange, type="topic", durable=True, no_declare=True)
    keys = [f"bureau.{args.bureau}.{pattern}" for pattern in args.patterns or ["activity.recorded.*"]]
    queue = Queue(args.queue, bindings=[binding(exchange, routing_key=key) for key in keys],
                  durable=True, auto_delete=False)
    seen = SeenEvents(args.seen_db)
    printed = 0
    handled = 0

    def handle(body: Any, message: Any) -> None:
        nonlocal printed, handled
        headers = message.headers or {}
        event_id = headers.get("cloudEvents:id") or message.properties.get("message_id")
        routing_key = message.delivery_info.get("routing_key", "")
        if event_id and seen.first_time(str(event_id)):
            print(json.dumps({
                "id": event_id,
                "type": headers.get("cloudEvents:type"),
                "routing_key": routing_key,
                "event_type": event_type(routing_key),
                "statement": body,
            }, ensure_ascii=False), file=out, flush=True)
            printed += 1
        message.ack()  # only now: what was printed is also remembered
        handled += 1

    with (
        Connection(args.amqp_uri, heartbeat=30) as connection,
        Consumer(connection, queues=[queue], callbacks=[handle], accept=["application/json"], prefetch_count=50),
    ):
        if args.replay_since:
            print(json.dumps({"replay": request_replay(args)}), file=sys.stderr, flush=True)
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
