"""A bureau's subscriber from nothing: a restricted broker user, its own queue, the live stream and a
replay through the gateway that looks like it — against the real broker, services and gateway.

The broker user is made by `lianxiao-admin broker-user-create` and used for real: RabbitMQ itself must
refuse what its permissions do not allow.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from amqp.exceptions import AccessRefused, NotAllowed
from kombu import Connection, Exchange, Queue, binding
from nameko.runners import ServiceRunner

from tests.activities.every_kind import activity_of

from .gateway_support import REPO_ROOT, City, bearer

TIMEOUT = 30
ADMIN = REPO_ROOT / ".venv" / "bin" / "lianxiao-admin"
ACTIVITIES = Exchange("activities.events", type="topic", durable=True, no_declare=True)
ACCOUNTS = Exchange("accounts.events", type="topic", durable=True, no_declare=True)


def consume(uri: str, queue: str, count: int, quiet: float = 1.5, timeout: float = 15.0) -> list[Any]:
    """Messages from `queue` (acked) until `count` arrived and nothing more came for `quiet` seconds."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    with Connection(uri) as connection:
        source = Queue(queue, channel=connection.channel(), no_declare=True)
        while time.monotonic() < deadline:
            message = source.get(no_ack=False, accept=["application/json"])
            if message is None:
                if len(messages) >= count and time.monotonic() - last >= quiet:
                    break
                time.sleep(0.05)
                continue
            message.ack()
            messages.append(message)
            last = time.monotonic()
    return messages


def refused(uri: str, action: Any) -> bool:
    """True when the broker refuses `action(channel)` with an access error."""
    with Connection(uri) as connection:
        try:
            action(connection.channel())
        except (AccessRefused, NotAllowed):
            return True
    return False


def test_the_broker_user_may_bind_only_its_bureau_and_do_nothing_else(subscriber: dict[str, Any], city: City,
                                                                       activities_service: ServiceRunner) -> None:
    uri, user = subscriber["uri"], subscriber["user"]
    own = f"bureau.{city.bureau_id}"

    def bind(exchange: Exchange, key: str, name: str = "probe") -> Any:
        return lambda channel: Queue(f"{user}.{name}", bindings=[binding(exchange, routing_key=key)],
                                     durable=True, channel=channel).declare()

    assert not refused(uri, bind(ACTIVITIES, f"{own}.activity.#", "activities"))
    assert not refused(uri, bind(ACCOUNTS, f"{own}.teacher.*"))
    for exchange, key in ((ACTIVITIES, "#"), (ACTIVITIES, f"bureau.{city.other_bureau_id}.activity.#"),
                          (ACTIVITIES, "bureau.*.activity.#"), (ACCOUNTS, "bureau.#")):
        assert refused(uri, bind(exchange, key)), key
    assert refused(uri, lambda channel: Queue("someone-else", channel=channel).declare())
    rpc = Exchange("nameko-rpc", type="topic", durable=True, no_declare=True)
    assert refused(uri, bind(rpc, "accounts.issue_token"))
    assert refused(uri, lambda channel: Exchange("mine", type="topic", channel=channel).declare())

    def publish_rpc(channel: Any) -> None:
        channel.confirm_select()
        channel.basic_publish_confirm(channel.prepare_message(b"{}"), exchange="nameko-rpc",
                                      routing_key="accounts.issue_token")

    assert refused(uri, publish_rpc)

    def publish_to(exchange: str, key: str) -> Any:
        def action(channel: Any) -> None:
            channel.confirm_select()
            channel.basic_publish_confirm(channel.prepare_message(b"{}"), exchange=exchange, routing_key=key)
        return action

    assert refused(uri, publish_to("activities.events", f"{own}.activity.recorded.blog_post"))  # forge events
    assert refused(uri, publish_to("", "rpc-accounts"))  # the default exchange
    assert refused(uri, lambda channel: Queue("rpc-accounts", channel=channel, no_declare=True).get())  # read RPC


def record(gateway: str, token: str, teacher_id: int, kinds: tuple[str, ...]) -> list[str]:
    items = [activity_of(kind, teacher_id, teacher_id, "") for kind in kinds]
    answer = requests.post(f"{gateway}/v1/activities/batch", json=items, headers=bearer(token), timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.json()["accepted"] == len(items), answer.text
    return [item["id"] for item in items]


def replay(gateway: str, token: str, **body: Any) -> requests.Response:
    return requests.post(f"{gateway}/v1/events/replay", json={"exchanges": ["activities.events"], **body},
                         headers=bearer(token), timeout=TIMEOUT)


def test_live_stream_and_replay_deliver_only_the_bureaus_events_the_queue_binds(
        gateway: str, subscriber: dict[str, Any], city: City, activities_service: ServiceRunner) -> None:
    uri, user = subscriber["uri"], subscriber["user"]
    own = f"bureau.{city.bureau_id}"
    everything, posts = f"{user}.everything", f"{user}.posts"
    with Connection(uri) as connection:
        channel = connection.channel()
        Queue(everything, bindings=[binding(ACTIVITIES, routing_key=f"{own}.activity.#")], durable=True,
              channel=channel).declare()
        Queue(posts, bindings=[binding(ACTIVITIES, routing_key=f"{own}.activity.recorded.blog_post")],
              durable=True, channel=channel).declare()
    ours = record(gateway, city.tokens["bureau_write"], city.teachers["east_one"], ("blog_post", "lecture", "training"))
    record(gateway, city.tokens["other_bureau_write"], city.teachers["elsewhere"], ("blog_post", "lecture"))
    live = consume(uri, everything, 3)
    assert [message.headers["cloudEvents:id"] for message in live] == ours  # nothing of the other bureau
    assert {message.delivery_info["routing_key"] for message in live} == {
        f"{own}.activity.recorded.{kind}" for kind in ("blog_post", "lecture", "training")}
    assert [message.headers["cloudEvents:id"] for message in consume(uri, posts, 1)] == ours[:1]

    token = city.tokens["bureau_read"]
    since = requests.get(f"{gateway}/v1/activities/{ours[0]}", headers=bearer(token), timeout=TIMEOUT).json()
    answer = replay(gateway, token, queue=everything, since=since["recorded_at"])
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["republished"] == 3 and result["complete"] is True
    assert result["exchanges"][0]["bindings"] == [f"{own}.activity.#"]
    assert result["exchanges"][0]["last_event_time"].endswith("Z")
    replayed = consume(uri, everything, 3)
    assert [(m.delivery_info["routing_key"], m.headers, m.body, m.properties["message_id"]) for m in replayed] == [
        (m.delivery_info["routing_key"], m.headers, m.body, m.properties["message_id"]) for m in live]
    assert all(m.delivery_info["exchange"].startswith("lianxiao.replay.activities.events.") for m in replayed)
    # Only what the queue's bindings select: the posts queue gets the post, not the lecture or training.
    assert replay(gateway, token, queue=posts, since=since["recorded_at"]).json()["republished"] == 1
    assert [m.delivery_info["routing_key"] for m in consume(uri, posts, 1)] == [f"{own}.activity.recorded.blog_post"]
    # Another bureau's token selects nothing from a queue bound to this bureau; the bureau is the token's.
    other = replay(gateway, city.tokens["other_bureau_write"], queue=everything, since="2000-01-01T00:00:00Z")
    assert other.status_code == 200 and other.json()["republished"] == 0
    assert consume(uri, everything, 0, quiet=1.0) == []


def test_replay_refusals(gateway: str, subscriber: dict[str, Any], city: City,
                         activities_service: ServiceRunner) -> None:
    token = city.tokens["bureau_read"]
    missing = replay(gateway, token, queue=f"{subscriber['user']}.missing", since="2000-01-01T00:00:00Z")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    school = replay(gateway, city.tokens["school_read"], queue="x.y", since="2000-01-01T00:00:00Z")
    assert school.status_code == 403
    bad = replay(gateway, token, queue="x y", since="yesterday", limit=0, scope={"bureau_id": 2})
    assert bad.status_code == 422
    assert {error["field"] for error in bad.json()["errors"]} == {"queue", "since", "limit", "scope"}


def test_accounts_replays_the_bureaus_teacher_events_into_a_queue_bound_to_them(
        gateway: str, subscriber: dict[str, Any], city: City) -> None:
    uri, user = subscriber["uri"], subscriber["user"]
    teachers = f"{user}.teachers"
    with Connection(uri) as connection:
        Queue(teachers, bindings=[binding(ACCOUNTS, routing_key=f"bureau.{city.bureau_id}.teacher.*")], durable=True,
              channel=connection.channel()).declare()
    answer = requests.post(f"{gateway}/v1/events/replay", headers=bearer(city.tokens["bureau_read"]), timeout=TIMEOUT,
                           json={"queue": teachers, "since": "2000-01-01T00:00:00Z", "exchanges": ["accounts.events"]})
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["exchanges"]
    assert result["exchange"] == "accounts.events" and result["republished"] >= 3  # the city's three teachers
    replayed = consume(uri, teachers, result["republished"])
    assert len(replayed) == result["republished"]
    assert {json.loads(message.body)["id"] for message in replayed} >= {
        city.teachers[key] for key in ("east_one", "east_two", "west")}
    assert city.teachers["elsewhere"] not in {json.loads(message.body)["id"] for message in replayed}
    assert all(message.delivery_info["routing_key"].startswith(f"bureau.{city.bureau_id}.teacher.")
               for message in replayed)
