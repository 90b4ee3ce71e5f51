"""A subscribing bureau's broker user reads event exchanges and nothing else (issue 12, item 9).

Against the real RabbitMQ (this test's own vhost): the user made by `broker_permissions` declares and
consumes its own queue bound to `activities.events`, and is refused reading RPC requests, calling RPC,
publishing events and touching another subscriber's queue.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlparse

import pytest
from amqp.exceptions import AccessRefused
from kombu import Connection, Exchange, Producer, Queue, binding

from services.common.broker_permissions import Management, add_subscriber, remove_subscriber
from services.common.events import event_exchange

pytestmark = pytest.mark.integration


@pytest.fixture
def subscriber(rabbit_config: dict) -> tuple[str, str]:
    services_uri = rabbit_config["AMQP_URI"]
    vhost = urlparse(services_uri).path.lstrip("/")
    management = Management("http://127.0.0.1:15672", "guest", "guest")
    name = f"lxt-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    user = add_subscriber(management, vhost, name, password)
    with Connection(services_uri) as connection:  # what the platform has: its exchanges and an RPC queue
        channel = connection.channel()
        for exchange in (event_exchange("activities"), Exchange("nameko-rpc", type="topic", durable=True)):
            exchange(channel).declare()
        Queue("rpc-accounts", Exchange("nameko-rpc", type="topic", durable=True), routing_key="accounts.*",
              durable=True)(channel).declare()
    yield name, f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}", services_uri
    remove_subscriber(management, name)


def publish(exchange: Exchange, routing_key: str):
    """Publish, then make one synchronous call: a refused publish only shows on the channel's next call."""
    def action(channel) -> None:
        Producer(channel).publish({"forged": 1}, exchange=exchange, routing_key=routing_key)
        channel.basic_qos(0, 1, False)
    return action


def refused(uri: str, action) -> bool:
    with Connection(uri) as connection:
        try:
            action(connection.channel())
        except AccessRefused:
            return True
    return False


def test_a_subscriber_reads_events_and_nothing_else(subscriber: tuple[str, str, str]) -> None:
    name, uri, services_uri = subscriber
    events = Exchange("activities.events", type="topic", durable=True, passive=True)
    own = Queue(f"subscriber.{name}.activities", bindings=[binding(events, routing_key="activity.#")],
                durable=True, auto_delete=False)
    with Connection(uri) as connection:
        own(connection.channel()).declare()
    with Connection(services_uri) as connection:
        Producer(connection.channel()).publish({"ok": 1}, exchange=event_exchange("activities"),
                                              routing_key="activity.recorded.blog_post")
    with Connection(uri) as connection:
        message = own(connection.channel()).get(no_ack=True)
    assert message is not None and message.payload == {"ok": 1}

    rpc = Exchange("nameko-rpc", type="topic", durable=True, passive=True)
    assert refused(uri, lambda channel: Queue("rpc-accounts", durable=True)(channel).get())  # read RPC requests
    assert refused(uri, publish(rpc, "accounts.issue_token"))  # call RPC
    assert refused(uri, lambda channel: Queue(f"spy.{name}", rpc, routing_key="accounts.*")(channel).declare())
    assert refused(uri, publish(events, "activity.recorded.blog_post"))  # publish events
    assert refused(uri, publish(Exchange("", type="direct", passive=True), "rpc-accounts"))  # the default exchange
    assert refused(uri, lambda channel: Queue("subscriber.other.activities", durable=True)(channel).declare())
