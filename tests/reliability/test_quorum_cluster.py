"""A 3-node RabbitMQ cluster of our own with a quorum queue: its leader node SIGKILLed during ingestion.

The platform (accounts, activities, the gunicorn gateway) runs on the first node; a quorum queue bound
to `activities.events` has its leader on the second node, and a consumer starts on that node with the
failover list of all three (`amqp://b;amqp://c;amqp://a`). Mid-ingestion the leader's beam is killed:
the remaining two nodes elect a new leader, the consumer fails over to another node, and every event
the outbox relay published with confirms is still delivered. The consumer dedupes by event id; raw
redeliveries (acks lost with the node) are counted separately.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eventlet
import pytest
from kombu import Connection, Consumer, Queue, binding

from services.common.events import event_exchange

from .figures import Row, record
from .infra import PostgresCluster, RabbitCluster, RabbitNode, wait_until
from .ingest import activities, ingest
from .stack import running_stack

ACTIVITIES = 3_000
QUORUM_QUEUE = "lxrel.quorum.activities"
KILL_AT = 0.3  # share of the activities stored when the leader is killed


@pytest.fixture()
def cluster() -> Iterator[RabbitCluster]:
    root = Path(tempfile.mkdtemp(prefix="lxrel-qq-"))
    nodes = RabbitCluster(root, size=3)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.destroy()
        shutil.rmtree(root, ignore_errors=True)


def quorum_queue() -> Queue:
    return Queue(QUORUM_QUEUE, bindings=[binding(event_exchange("activities"), routing_key="bureau.*.activity.#")],
                 durable=True, auto_delete=False, queue_arguments={"x-queue-type": "quorum"})


def declare_quorum_queue(uri: str) -> None:
    """Declared through `uri`'s node: with the default client-local locator, the leader starts there."""
    with Connection(uri, connect_timeout=5) as connection:
        channel = connection.default_channel
        exchange = event_exchange("activities")
        exchange.maybe_bind(channel)
        exchange.declare()
        queue = quorum_queue()
        queue.maybe_bind(channel)
        queue.declare()


def leader_of(node: RabbitNode, vhost: str, queue: str = QUORUM_QUEUE) -> str:
    """The node name currently leading `queue`, as `node` sees it ('' if none)."""
    output = node.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type", "leader", timeout=20)
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0] == queue:
            assert fields[1] == "quorum", f"{queue} is a {fields[1]} queue"
            return fields[2].strip()
    return ""


@dataclass
class FailoverConsumer:
    """Consumes the quorum queue with a kombu failover URI list, acks each message, dedupes by id."""

    uri: str
    deliveries: int = 0
    ids: Counter[str] = field(default_factory=Counter)
    failovers: int = 0
    hosts: list[str] = field(default_factory=list)
    running: bool = True
    last_message: float = field(default_factory=time.monotonic)

    @property
    def distinct(self) -> int:
        return len(self.ids)

    def on_message(self, body: Any, message: Any) -> None:
        self.deliveries += 1
        self.last_message = time.monotonic()
        self.ids[message.properties.get("message_id") or message.headers.get("cloudEvents:id")] += 1
        message.ack()

    def run(self) -> None:
        connection = Connection(self.uri, connect_timeout=3, failover_strategy="round-robin")
        try:
            while self.running:
                try:
                    connection.ensure_connection(max_retries=30, interval_start=0.2, interval_step=0.3,
                                                 interval_max=1.0, timeout=30)
                    self.hosts.append(connection.host)
                    with connection.channel() as channel:
                        channel.basic_qos(0, 200, False)
                        with Consumer(channel, queues=[quorum_queue()], callbacks=[self.on_message],
                                      accept=["application/json"]):
                            while self.running:
                                with contextlib.suppress(socket.timeout):
                                    connection.drain_events(timeout=0.5)
                except (*connection.recoverable_connection_errors, *connection.recoverable_channel_errors,
                        *connection.connection_errors, *connection.channel_errors, OSError) as error:
                    if not self.running:
                        break
                    self.failovers += 1
                    self.hosts.append(f"lost ({type(error).__name__})")
                    with contextlib.suppress(Exception):
                        connection.collect()
                    eventlet.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                connection.release()

    def wait_for(self, expected: set[str], timeout: float, quiet: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expected <= set(self.ids) and time.monotonic() - self.last_message > quiet:
                return
            eventlet.sleep(0.1)


@pytest.mark.timeout(300)
def test_quorum_leader_killed_during_ingestion_loses_nothing(
    cluster: RabbitCluster, postgres: PostgresCluster, tmp_path: Path
) -> None:
    began = time.monotonic()
    with running_stack(cluster.first, postgres, tmp_path) as stack:
        assert stack.city is not None
        leader_node = cluster.nodes[1]
        declare_quorum_queue(f"{leader_node.uri}{stack.vhost}")
        leader = wait_until(lambda: leader_of(cluster.first, stack.vhost), 20, "the quorum queue to elect a leader")
        victim = cluster.node(leader)
        assert victim is not cluster.first, "the leader sits on the node the platform uses"
        others = [node for node in cluster.nodes if node is not victim]
        consumer = FailoverConsumer(cluster.failover_uri(stack.vhost, [victim, *reversed(others)]))
        consuming = eventlet.spawn(consumer.run)

        token = stack.city.tokens["bureau_write"]
        items = activities(list(stack.city.teachers.values())[:3], ACTIVITIES, "quorum")
        kill: dict[str, Any] = {}

        def killer() -> None:
            wait_until(lambda: stack.scalar("activities", "SELECT count(*) FROM activities") >= ACTIVITIES * KILL_AT,
                       120, "ingestion to progress", interval=0.05)
            kill["stored_at_kill"] = stack.scalar("activities", "SELECT count(*) FROM activities")
            kill["delivered_at_kill"] = consumer.distinct
            started = time.monotonic()
            victim.kill()  # SIGKILL the leader's beam: no goodbye to its peers or clients
            new_leader = wait_until(
                lambda: (name := leader_of(cluster.first, stack.vhost)) and name != victim.name and name, 30,
                "a new quorum leader", interval=0.2,
            )
            kill["new_leader"] = new_leader
            kill["election"] = time.monotonic() - started

        killing = eventlet.spawn(killer)
        ledger = ingest(stack.url, token, items, batch_size=100, concurrency=4, timeout=150)
        killing.wait()

        sent = {item["id"] for item in items}
        stored = stack.stored_ids()
        stack.outbox_drained(timeout=60)
        consumer.wait_for(sent, timeout=60)
        consumer.running = False
        with eventlet.Timeout(10, False):
            consuming.wait()

        lost = len(ledger.confirmed - set(stored)) + len(ledger.confirmed - set(consumer.ids))
        duplicated = (sum(count - 1 for count in stored.values()) + len(set(stored) - sent)
                      + len(set(consumer.ids) - sent))
        record(Row(
            "3-node RabbitMQ cluster, quorum queue leader SIGKILLed", len(sent), len(ledger.confirmed),
            len(stored), consumer.distinct, lost, duplicated, f"{ledger.longest_outage_seconds:.1f} s",
            f"leader {victim.name.split('@')[0]} killed at {kill.get('stored_at_kill')} rows stored / "
            f"{kill.get('delivered_at_kill')} delivered; new leader {str(kill.get('new_leader', '?')).split('@')[0]} "
            f"seen after {kill.get('election', float('nan')):.1f} s; consumer failovers {consumer.failovers} "
            f"({' -> '.join(consumer.hosts)}); {consumer.deliveries - consumer.distinct} raw redeliveries "
            f"(same id, deduped); client statuses {dict(ledger.statuses)}; test {time.monotonic() - began:.0f} s",
        ))
        assert "new_leader" in kill, "the leader was not killed during the ingestion"
        assert not victim.running()
        assert consumer.failovers >= 1, "the consumer never lost its node: no failover was exercised"
        assert not ledger.rejected and ledger.unconfirmed_batches == 0 and ledger.server_errors == 0
        assert ledger.confirmed == sent
        assert lost == 0 and duplicated == 0
        assert set(stored) == sent and set(consumer.ids) == sent
