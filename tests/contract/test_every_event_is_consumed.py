"""Every event a service publishes is consumed by every subscriber without dead-lettering (issue 14 item 1).

Two sources of events: the examples of `docs/events/asyncapi.yaml` (checked against their own schema
first), and the real code paths (accounts' domain code, a roster import included, and activities'
RPCs), published by the services' own outbox relays over a real broker to the running consumers.
A consumer dead-letters exactly the events its handler refuses with `InvalidInput`
(services/common/subscriber.py): the dead-letter queues must stay empty and each consumer must have
recorded every event type it subscribes to.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.exceptions import NotFound
from kombu import Connection, Queue
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from services.accounts import directory, roster, tokens
from services.accounts.service import AccountsService
from services.activities import roster as activities_roster
from services.activities.models import metadata as activities_metadata
from services.activities.models import processed_events as activities_processed
from services.activities.service import ActivitiesService
from services.common.scope import Scope
from services.common.subscriber import dead_letter_queue_name
from services.reporting import projection
from services.reporting.models import groups as reporting_groups
from services.reporting.models import metadata as reporting_metadata
from services.reporting.models import processed_events as reporting_processed
from services.reporting.service import ACCOUNTS_EVENTS, ACTIVITY_EVENTS, ReportingService
from services.resources import catalog as resources_catalog
from services.resources.models import metadata as resources_metadata
from services.resources.models import processed_events as resources_processed
from services.resources.service import ResourcesService
from tests.activities.broker import publish_event
from tests.activities.contract import document, resolve, validator
from tests.reporting.conftest import event

# Who subscribes to what, taken from the consumers themselves.
SUBSCRIBERS: dict[str, dict[str, tuple[str, ...]]] = {
    "reporting": {"accounts": tuple(ACCOUNTS_EVENTS), "activities": tuple(ACTIVITY_EVENTS)},
    "activities": {"accounts": activities_roster.TEACHER_EVENT_KEYS},
    "resources": {"accounts": tuple(resources_catalog.ACCOUNTS_EVENTS),
                  "classroom_relay": tuple(resources_catalog.RELAY_EVENTS)},
}


def matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is one word, `#` any number of words."""
    regex = re.escape(pattern).replace(r"\*", r"[^.]+").replace(r"\#", r".*")
    return re.fullmatch(regex, routing_key) is not None


def subscribers_of(service: str, routing_key: str) -> list[str]:
    return [consumer for consumer, sources in SUBSCRIBERS.items()
            if any(matches(pattern, routing_key) for pattern in sources.get(service, ()))]


def asyncapi_examples() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(service, event type, message pointer, payload) of every example in the document (channels are
    `bureau.{bureau}.<event type>`; publish_event routes to the payload's bureau)."""
    for channel_name, channel in document()["channels"].items():
        exchange = resolve(channel["bindings"]["amqp"])["exchange"]["name"]
        pointer = channel["subscribe"]["message"]["$ref"]
        message = resolve(channel["subscribe"]["message"])
        for example in message.get("examples", []):
            payload = example["payload"]
            kind = (payload.get("context", {}).get("extensions", {})
                    .get("https://lianxiao.example/xapi/extensions/kind", "comment"))
            event_type = channel_name.removeprefix("bureau.{bureau}.").replace("{kind}", kind)
            yield exchange.split(".")[0], event_type, pointer, payload


def test_every_message_has_examples_that_follow_its_schema():
    examples = list(asyncapi_examples())
    documented = {resolve(channel["subscribe"]["message"])["name"] for channel in document()["channels"].values()}
    with_examples = {resolve({"$ref": pointer})["name"] for _, _, pointer, _ in examples}
    assert with_examples == documented
    for _service, routing_key, pointer, payload in examples:
        errors = [error.message for error in validator(f"{pointer}/payload").iter_errors(payload)]
        assert errors == [], (routing_key, errors)


def test_every_example_is_handled_by_each_subscriber(sqlite_session):
    """The consumers' own handlers (what their entrypoints call) accept every documented example."""
    handled: dict[str, set[str]] = {"reporting": set(), "activities": set(), "resources": set()}
    with sqlite_session(reporting_metadata) as reporting_db, sqlite_session(activities_metadata) as activities_db, \
            sqlite_session(resources_metadata) as resources_db:
        for service, routing_key, _pointer, payload in asyncapi_examples():
            for consumer in subscribers_of(service, routing_key):
                item = event(routing_key, payload)
                if consumer == "resources":
                    with resources_db.begin():
                        apply = (resources_catalog.apply_accounts_event if service == "accounts"
                                 else resources_catalog.apply_relay_event)
                        apply(resources_db, routing_key, payload, payload.get("bureau_id", 1))
                elif consumer == "reporting":
                    with reporting_db.begin():
                        projection.apply_event(reporting_db, routing_key, payload, item.attributes)
                else:
                    with activities_db.begin():
                        activities_roster.apply_teacher_event(activities_db, routing_key, payload, None)
                handled[consumer].add(routing_key)
        assert reporting_db.scalar(select(reporting_groups.c.bureau_id).where(reporting_groups.c.id == 4)) == 1
    assert {"group.created", "teacher.joined", "activity.recorded.training", "activity.hidden.comment"} \
        <= handled["reporting"]
    assert handled["activities"] == {"teacher.joined", "teacher.changed", "teacher.left"}
    assert set(resources_catalog.ACCOUNTS_EVENTS) <= handled["resources"]


# --- over the broker, from the real code paths --------------------------------------------------------


ID_KEYS = frozenset({"id", "bureau_id", "school_id", "district_id", "alliance_id", "lead_school_id", "leader_id",
                     "hub_school_id", "scope_id"})
OFFSET = 2_000_000_000  # far above any id this run's other tests create in the shared databases


def shifted(value: Any, key: str = "") -> Any:
    """An example with its organisation and teacher ids moved out of the way of other tests' data."""
    if isinstance(value, dict):
        return {name: shifted(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [shifted(item, key) for item in value]
    is_id = key in ID_KEYS or key.endswith("_ids") or key.rsplit("/", 1)[-1] in ("bureau", "school", "district",
                                                                                "group")
    if is_id and isinstance(value, int) and not isinstance(value, bool):
        return value + OFFSET
    if key == "name" and isinstance(value, str) and re.fullmatch(r"teacher/\d+", value):
        return f"teacher/{int(value.split('/')[1]) + OFFSET}"
    return value


def queue_depth(uri: str, name: str) -> int:
    """Messages waiting in a queue; 0 when it was never declared (nothing was ever dead-lettered)."""
    with Connection(uri) as connection:
        try:
            _name, messages, _consumers = Queue(name, durable=True, channel=connection.channel()).queue_declare(
                passive=True)
        except NotFound:
            return 0
        return int(messages)


CONSUMER_QUEUES = [f"evt-{source}--{consumer}.{handler}" for consumer, source, handler in (
    ("reporting", "accounts", "on_accounts_event"), ("reporting", "activities", "on_activity_event"),
    ("activities", "accounts", "on_teacher_event"), ("resources", "accounts", "on_accounts_event"))]


def processed_types(url: str, table: Any) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(select(table.c.type)).scalars())
    finally:
        engine.dispose()


ROSTER = "工号,姓名,角色,教研组\r\nR001,子老师,教研组长,物理组\r\nR002,丑老师,教务主任；教师,物理组\r\n".encode()


@pytest.mark.integration
def test_every_published_event_type_is_consumed_without_dead_letters(service_config, runner_factory):
    uri = service_config["AMQP_URI"]
    url = service_config["DATABASE_URL"]

    # Accounts: every change its code publishes, written before the services start (its relay
    # publishes the backlog as it starts).
    accounts_engine = create_engine(url.replace("{service}", "accounts"))
    with Session(accounts_engine, expire_on_commit=False) as session, session.begin():
        bureau = directory.create_bureau(session, {"code": f"ev{uuid.uuid4().hex[:8]}", "name": "契约市教育局"})
        admin = Scope.bureau_admin(bureau["id"])
        district = directory.create_district(session, admin, {"bureau_id": bureau["id"], "name": "南片区"})
        school = directory.create_school(session, admin, {
            "bureau_id": bureau["id"], "district_id": district["id"], "code": "C-01", "name": "南山小学"})
        other = directory.create_school(session, admin, {
            "bureau_id": bureau["id"], "code": "C-02", "name": "北湖小学", "kind": "branch"})
        alliance = directory.create_alliance(session, admin, {
            "bureau_id": bureau["id"], "name": "南山联校", "lead_school_id": school["id"], "member_school_ids": []})
        directory.add_alliance_member(session, admin, alliance["id"], other["id"])
        teacher = directory.create_teacher(session, admin, {
            "school_id": school["id"], "staff_number": "C001", "name": "寅老师", "roles": ["teacher"]})
        directory.create_group(session, admin, {
            "bureau_id": bureau["id"], "kind": "collaboration", "school_id": None, "name": "城乡协作组",
            "member_ids": [teacher["id"]]})
        roster.import_roster(session, admin, other["id"], "名册.csv", ROSTER)
        directory.update_teacher(session, admin, teacher["id"], {"active": False})
        issued = tokens.issue_token(session, admin, {"scope_kind": "school", "scope_id": school["id"], "label": "t"})
        tokens.revoke_token(session, admin, issued["id"])
        roster_teacher = directory.list_teachers(session, admin, other["id"])["items"][0]
    accounts_engine.dispose()

    # The consumers first: their queues must be bound before accounts' relay publishes its backlog, or the
    # broker routes those events to no queue (the three started together raced, and lost them now and then).
    runner_factory(service_config, ActivitiesService, ReportingService, ResourcesService).start()
    runner_factory(service_config, AccountsService).start()
    scope = {"bureau_id": bureau["id"], "kind": "bureau", "id": bureau["id"], "access": "write"}
    # Activities: recorded, corrected and hidden, once it has heard of the roster's teacher.
    deadline = time.monotonic() + 20
    with ClusterRpcProxy(service_config, timeout=10) as rpc:
        while True:
            try:
                post = rpc.activities.record_activity(scope, {
                    "kind": "blog_post", "teacher_id": roster_teacher["id"], "occurred_at": "2026-03-05T20:00:00+08:00",
                    "details": {"title": "磨课记录", "word_count": 900}})["activity"]
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        training = rpc.activities.record_activity(scope, {
            "kind": "training", "teacher_id": roster_teacher["id"], "occurred_at": "2026-03-04T15:00:00+08:00",
            "details": {"title": "新课标", "mode": "online", "duration_minutes": 50}})["activity"]
        rpc.activities.record_activity(scope, {
            "kind": "training", "teacher_id": roster_teacher["id"], "occurred_at": "2026-03-04T15:00:00+08:00",
            "corrects": training["id"], "details": {"title": "新课标", "mode": "online", "duration_minutes": 55}})
        rpc.activities.hide_activity(scope, post["id"], {"moderator_id": roster_teacher["id"], "reason": "重复发布"})

    # And every documented example, as its producer would publish it.
    # (classroom_relay's examples are only schema-checked here: SUBSCRIBERS does not list activities'
    # classroom consumer, whose events need the relay's own teachers and sessions.)
    for service, routing_key, _pointer, payload in asyncapi_examples():
        if subscribers_of(service, routing_key):
            publish_event(uri, service, routing_key, shifted(payload))

    wanted = {
        "reporting": {f"cn.lianxiao.accounts.{key}" for key in (
            "district.created", "school.created", "alliance.created", "school.joined_alliance", "teacher.joined",
            "teacher.changed", "teacher.left", "group.created")} | {
            "cn.lianxiao.activities.activity.recorded.blog_post", "cn.lianxiao.activities.activity.recorded.training",
            "cn.lianxiao.activities.activity.corrected.training", "cn.lianxiao.activities.activity.hidden.blog_post"},
        "activities": {f"cn.lianxiao.accounts.{key}" for key in ("teacher.joined", "teacher.changed", "teacher.left")},
        "resources": {f"cn.lianxiao.accounts.{key}" for key in resources_catalog.ACCOUNTS_EVENTS},
    }
    tables = {"reporting": reporting_processed.table, "activities": activities_processed.table,
              "resources": resources_processed.table}

    def reporting_groups_of_bureau() -> dict[str, Any]:
        engine = create_engine(url.replace("{service}", "reporting"))
        try:
            with engine.connect() as connection:
                return {row.name: row for row in connection.execute(
                    select(reporting_groups).where(reporting_groups.c.bureau_id == bureau["id"]))}
        finally:
            engine.dispose()

    deadline = time.monotonic() + 90  # bounded; generous for a loaded shared machine
    while time.monotonic() < deadline:
        seen = {consumer: processed_types(url.replace("{service}", consumer), tables[consumer]) for consumer in tables}
        known = reporting_groups_of_bureau()
        queues_idle = all(queue_depth(uri, name) == 0 for name in CONSUMER_QUEUES)
        if queues_idle and len(known) == 2 and all(wanted[consumer] <= seen[consumer] for consumer in wanted):
            break
        time.sleep(0.3)
    for consumer in wanted:
        assert wanted[consumer] <= seen[consumer], (consumer, wanted[consumer] - seen[consumer])
    for consumer in ("reporting", "activities", "resources"):
        assert queue_depth(uri, dead_letter_queue_name(consumer)) == 0, f"{consumer} dead-lettered an event"
    assert set(known) == {"物理组", "城乡协作组"}, known
    assert known["物理组"].school_id == other["id"]  # the roster's group reached reporting
    assert known["城乡协作组"].school_id is None
