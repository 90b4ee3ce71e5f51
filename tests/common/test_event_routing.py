"""Routing keys with the bureau first, the broker users' patterns over them, and replay's topic matching."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import MetaData

from services.accounts.broker_users import permissions, topic_read_pattern
from services.common.events import Outbox, any_bureau, bureau_routing_key, event_type_of
from services.common.replay import topic_matches


def test_routing_keys_put_the_bureau_first_and_consumers_get_the_event_type_back():
    key = bureau_routing_key(3, "activity.recorded.blog_post")
    assert key == "bureau.3.activity.recorded.blog_post"
    assert event_type_of(key) == "activity.recorded.blog_post"
    assert event_type_of("teacher.joined") == "teacher.joined"  # published before bureau routing keys
    assert topic_matches(any_bureau("activity.recorded.*"), key)
    assert not topic_matches(any_bureau("activity.recorded.*"), "bureau.3.activity.hidden.comment")


@pytest.mark.parametrize(("binding_key", "allowed"), [
    ("bureau.3.activity.#", True), ("bureau.3.#", True), ("bureau.12.teacher.*", True),
    ("bureau.30.#", False), ("bureau.1.#", False), ("bureau.*.activity.#", False), ("#", False),
    ("*.3.activity.#", False), ("bureau.#", False), ("bureau.3", False),
])
def test_a_broker_users_binding_keys_are_limited_to_its_bureaus(binding_key, allowed):
    # RabbitMQ matches topic permissions as an unanchored regex search; ours is anchored.
    assert (re.search(topic_read_pattern([3, 12]), binding_key) is not None) is allowed


def test_a_broker_user_touches_only_its_own_queues_and_reads_only_the_event_exchanges():
    rules = permissions("hexi-sub")
    assert re.search(rules["configure"], "hexi-sub.activities") and not re.search(rules["configure"], "other.q")
    for resource in ("nameko-rpc", "amq.default", "accounts.events", "hexi-sub"):
        assert not re.search(rules["write"], resource), resource
    readable = ("activities.events", "accounts.events", "classroom_relay.events", "resources.events", "hexi-sub.q")
    for resource in readable:
        assert re.search(rules["read"], resource), resource
    assert not re.search(rules["read"], "nameko-rpc") and not re.search(rules["read"], "evt-accounts--x")


def test_dataschema_names_the_payload_schema():
    outbox = Outbox("accounts", MetaData(), schemas={"school.joined_alliance": "alliance_membership"})
    assert outbox.schema_of("school.joined_alliance") == "alliance_membership"
    assert outbox.schema_of("school.created") == "school"


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("activity.recorded.*", "activity.recorded.blog_post", True),
    ("activity.recorded.*", "activity.hidden.comment", False),
    ("activity.#", "activity.hidden.comment", True),
    ("#", "teacher.joined", True),
    ("activity.*.comment", "activity.hidden.comment", True),
    ("activity.*", "activity.recorded.blog_post", False),
    ("#.comment", "activity.recorded.comment", True),
])
def test_topic_matching_follows_amqp(pattern, key, expected):
    assert topic_matches(pattern, key) is expected
