"""The published contract: real messages from activities and accounts validated against asyncapi.yaml."""

from __future__ import annotations

import uuid

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from services.accounts import directory, tokens
from services.accounts.service import AccountsService
from services.activities import schemas
from services.activities.models import RosterTeacher
from services.activities.service import ActivitiesService
from services.common.events import event_exchange, event_type_of
from services.common.scope import Scope
from tests.activities.activity_fixtures import BUREAU, EAST_DISTRICT, MASTER_SCHOOL, teacher_body
from tests.activities.broker import declare_queue, drain, publish_event, wait_for
from tests.activities.contract import channel_for, contract_errors, document, resolve

SCOPE = {"bureau_id": BUREAU, "kind": "bureau", "id": BUREAU, "access": "write"}


def test_the_document_names_every_kind_and_verb_the_code_uses():
    assert resolve({"$ref": "#/components/schemas/Kind"})["enum"] == list(schemas.KINDS)
    verb_enum = resolve({"$ref": "#/components/schemas/ActivityStatement"})["properties"]["verb"]["properties"]["id"]
    assert set(verb_enum["enum"]) == {kind.verb for kind in schemas.KINDS.values()}
    assert document()["asyncapi"].startswith("2.6")
    with pytest.raises(AssertionError, match="not in the AsyncAPI"):
        channel_for("activities.events", "bureau.31.activity.deleted.comment")
    with pytest.raises(AssertionError, match="not in the AsyncAPI"):
        channel_for("activities.events", "activity.recorded.comment")  # no bureau: not a routing key we use


def test_every_exchange_names_the_servers_vhost_and_every_relay_event_has_a_channel():
    servers = document()["servers"]["city"]
    assert servers["url"].endswith("/{vhost}") and "vhost" in servers["variables"]
    for binding in document()["components"]["channelBindings"].values():
        assert binding["exchange"]["vhost"] == "{vhost}"
    for event_type in ("session.started", "session.ended", "classroom.joined", "classroom.left", "stream.degraded",
                       "stream.recovered", "recording.started", "recording.ended", "recording.available"):
        assert channel_for("classroom_relay.events", f"bureau.7.{event_type}")
    headers = resolve({"$ref": "#/components/schemas/CloudEventHeaders"})
    assert "/lianxiao/classroom_relay" in headers["properties"]["cloudEvents:source"]["enum"]


def test_a_message_that_breaks_the_contract_is_caught():
    headers = {"cloudEvents:id": "x", "cloudEvents:type": "cn.lianxiao.activities.activity.recorded.blog_post"}
    errors = contract_errors("activities.events", "bureau.31.activity.recorded.blog_post", headers,
                             b'{"id": "not-a-uuid"}')
    assert any("cloudEvents:source" in error for error in errors)
    assert any(error.startswith("body: $.id") for error in errors)
    assert any("dataschema" in error for error in errors)


@pytest.mark.integration
def test_published_activity_and_accounts_messages_follow_the_document(service_config, runner_factory):
    uri = service_config["AMQP_URI"]
    declare_queue(uri, "contract-activities", event_exchange("activities"), ("#",))
    declare_queue(uri, "contract-accounts", event_exchange("accounts"), ("#",))

    # Accounts: organisation changes made with its own domain code, published by its own relay.
    accounts_engine = create_engine(service_config["DATABASE_URL"].replace("{service}", "accounts"))
    code = f"ct{uuid.uuid4().hex[:8]}"
    with Session(accounts_engine, expire_on_commit=False) as session, session.begin():
        bureau = directory.create_bureau(session, {"code": code, "name": "测试市教育局"})
        admin = Scope.bureau_admin(bureau["id"])
        district = directory.create_district(session, admin, {"bureau_id": bureau["id"], "name": "北片区"})
        school = directory.create_school(session, admin, {
            "bureau_id": bureau["id"], "district_id": district["id"], "code": "N-01", "name": "北山小学"})
        other = directory.create_school(session, admin, {
            "bureau_id": bureau["id"], "code": "N-02", "name": "南溪小学", "kind": "branch"})
        directory.create_alliance(session, admin, {
            "bureau_id": bureau["id"], "name": "北山联校", "lead_school_id": school["id"],
            "member_school_ids": [other["id"]]})
        teacher = directory.create_teacher(session, admin, {
            "school_id": school["id"], "staff_number": "N001", "name": "林晓", "roles": ["teacher", "blog_host"]})
        directory.create_group(session, admin, {
            "bureau_id": bureau["id"], "kind": "research", "school_id": school["id"], "name": "语文组",
            "member_ids": [teacher["id"]]})
        directory.update_teacher(session, admin, teacher["id"], {"active": False})
        issued = tokens.issue_token(session, admin, {"scope_kind": "school", "scope_id": school["id"], "label": "t"})
        tokens.revoke_token(session, admin, issued["id"])
    accounts_engine.dispose()

    runner = runner_factory(service_config, ActivitiesService, AccountsService)
    runner.start()

    # Activities: recorded, corrected and hidden facts.
    publish_event(uri, "accounts", "teacher.joined", teacher_body(71, MASTER_SCHOOL, EAST_DISTRICT))
    publish_event(uri, "accounts", "teacher.joined", teacher_body(72, MASTER_SCHOOL, EAST_DISTRICT,
                                                                   roles=("moderator",)))
    activities_engine = create_engine(service_config["DATABASE_URL"].replace("{service}", "activities"))
    with activities_engine.connect() as connection:
        wait_for(lambda: connection.execute(
            select(func.count()).where(RosterTeacher.id.in_([71, 72]))).scalar_one() == 2, what="the roster")
    activities_engine.dispose()
    with ClusterRpcProxy(service_config) as rpc:
        post = rpc.activities.record_activity(SCOPE, {
            "kind": "blog_post", "teacher_id": 71, "occurred_at": "2025-03-05T20:00:00+08:00",
            "details": {"title": "磨课记录", "word_count": 900}})["activity"]
        prep = rpc.activities.record_activity(SCOPE, {
            "kind": "collective_lesson_prep", "teacher_id": 71, "occurred_at": "2025-03-04T15:00:00+08:00",
            "details": {"lead_preparer_id": 71, "topic": "圆的面积", "participant_ids": [71, 72],
                        "mode": "offline", "duration_minutes": 60}})["activity"]
        rpc.activities.record_activity(SCOPE, {
            "kind": "collective_lesson_prep", "teacher_id": 71, "occurred_at": "2025-03-04T15:00:00+08:00",
            "corrects": prep["id"],
            "details": {"lead_preparer_id": 71, "topic": "圆的面积", "participant_ids": [71, 72],
                        "mode": "offline", "duration_minutes": 90}})
        comment = rpc.activities.record_activity(SCOPE, {
            "kind": "comment", "teacher_id": 72, "occurred_at": "2025-03-05T21:00:00+08:00",
            "details": {"on_activity_id": post["id"], "text": "点赞"}})["activity"]
        rpc.activities.hide_activity(SCOPE, comment["id"], {"moderator_id": 72, "reason": "与主题无关"})

    activity_messages = drain(uri, "contract-activities", 5)
    account_messages = drain(uri, "contract-accounts", 15, timeout=15)  # 13 + the 2 joined above
    keys = [event_type_of(message.delivery_info["routing_key"]) for message in activity_messages]
    assert {message.delivery_info["routing_key"].split(".")[1] for message in activity_messages} == {str(BUREAU)}
    assert keys == ["activity.recorded.blog_post", "activity.recorded.collective_lesson_prep",
                    "activity.corrected.collective_lesson_prep", "activity.recorded.comment",
                    "activity.hidden.comment"]
    account_keys = [event_type_of(message.delivery_info["routing_key"]) for message in account_messages]
    assert {"bureau.created", "district.created", "school.created", "alliance.created", "school.joined_alliance",
            "teacher.joined", "group.created", "teacher.changed", "teacher.left", "token.issued",
            "token.revoked"} <= set(account_keys)
    for message in activity_messages + account_messages:
        exchange = message.delivery_info["exchange"]
        errors = contract_errors(exchange, message.delivery_info["routing_key"], message.headers, message.body)
        assert errors == [], (message.delivery_info["routing_key"], errors)

