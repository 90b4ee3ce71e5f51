"""xAPI 1.0.3 reads (unit, SQLite): single statements, voiding, filters, time bounds, paging, formats.

Every statement the query returns is checked against ralph's xAPI statement model (a second, outside
reading of the spec); the HTTP side with a real xAPI client is tests/gateway/test_gateway_xapi.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from ralph.models.xapi.base.statements import BaseXapiStatement
from sqlalchemy import update

from services.activities import log, moderation, statement_query, xapi
from services.activities.exceptions import InvalidInput, NotFound
from services.activities.models import Activity
from services.activities.schemas import KINDS
from tests.activities.activity_fixtures import MASTER_SCHOOL
from tests.activities.every_kind import RELAY_KINDS, activity_of


def query(session, scope, **params):
    return statement_query.query(session, scope, {key: str(value) for key, value in params.items()})


def ids(result) -> list[str]:
    return [statement["id"] for statement in result["statements"]]


def agent_param(teacher_id: int) -> str:
    return json.dumps({"objectType": "Agent", "account": {"homePage": xapi.HOME_PAGE, "name": f"teacher/{teacher_id}"}})


def valid_xapi(statement: dict) -> dict:
    BaseXapiStatement.model_validate(statement)  # raises on anything ralph's reading of 1.0.3 refuses
    return statement


def record_every_kind(session, scope) -> dict[str, str]:
    post = log.record(session, scope, activity_of("blog_post", 1, 2, str(uuid.uuid4())))["activity"]["id"]
    recorded = {"blog_post": post}
    for kind in KINDS:
        if kind == "blog_post":
            continue
        data = activity_of(kind, 1, 2, post)
        if kind in RELAY_KINDS:
            outcome = log.record_prepared(session, log.prepare(session, None, data, from_client=False), "relay")
        else:
            outcome = log.record(session, scope, data)
        recorded[kind] = outcome["activity"]["id"]
    return recorded


def test_every_kind_reads_back_as_a_valid_statement_alone_and_in_a_result(session, bureau_scope):
    recorded = record_every_kind(session, bureau_scope)
    result = query(session, bureau_scope, ascending="true", limit=0)
    assert ids(result) == list(recorded.values()) and result["more"] == ""
    for kind, statement_id in recorded.items():
        single = valid_xapi(query(session, bureau_scope, statementId=statement_id))
        assert single["verb"]["id"] == KINDS[kind].verb
        assert single == next(item for item in result["statements"] if item["id"] == statement_id)


def test_a_hidden_statement_is_voided_by_the_moderators_statement(session, bureau_scope):
    post = log.record(session, bureau_scope, activity_of("blog_post", 1, 2, ""))["activity"]
    comment = log.record(session, bureau_scope, activity_of("comment", 3, 1, post["id"]))["activity"]
    moderation.hide(session, bureau_scope, comment["id"], {"moderator_id": 2, "reason": "与主题无关"})
    hidden = session.query(Activity).filter_by(id=comment["id"]).one()
    statements = query(session, bureau_scope, ascending="true")["statements"]
    assert [item["id"] for item in statements] == [post["id"], hidden.hidden_statement_id]
    voiding = valid_xapi(statements[1])
    assert voiding["verb"]["id"] == xapi.VOIDED_VERB
    assert voiding["object"] == {"objectType": "StatementRef", "id": comment["id"]}
    assert voiding["result"]["response"] == "与主题无关" and "platform" not in voiding["context"]
    assert voiding == xapi.hide_statement(hidden)  # the hide event carries the same statement
    with pytest.raises(NotFound, match="voided"):
        query(session, bureau_scope, statementId=comment["id"])
    assert query(session, bureau_scope, voidedStatementId=comment["id"])["id"] == comment["id"]
    assert query(session, bureau_scope, statementId=hidden.hidden_statement_id) == voiding
    with pytest.raises(NotFound):
        query(session, bureau_scope, voidedStatementId=post["id"])  # not voided
    # StatementRef rule: the voiding statement matches filters its target meets, and its own.
    assert ids(query(session, bureau_scope, agent=agent_param(3))) == [hidden.hidden_statement_id]
    assert ids(query(session, bureau_scope, agent=agent_param(2))) == [hidden.hidden_statement_id]
    assert ids(query(session, bureau_scope, verb=KINDS["comment"].verb)) == [hidden.hidden_statement_id]
    assert ids(query(session, bureau_scope, verb=xapi.VOIDED_VERB)) == [hidden.hidden_statement_id]
    assert ids(query(session, bureau_scope, activity=xapi.ACTIVITY_BASE + post["id"], ascending="true")) == [
        post["id"], hidden.hidden_statement_id]


def test_a_correction_voids_the_original(session, bureau_scope):
    original = log.record(session, bureau_scope, activity_of("lecture", 1, 2, ""))["activity"]
    data = activity_of("lecture", 1, 2, "")
    data["corrects"] = original["id"]
    data["details"]["duration_minutes"] = 90
    correction = log.record(session, bureau_scope, data)["activity"]
    statements = query(session, bureau_scope, ascending="true")["statements"]
    voiding_id = xapi.correction_voiding_id(correction["id"])
    assert [item["id"] for item in statements] == [correction["id"], voiding_id]
    voiding = valid_xapi(statements[1])
    assert voiding["object"] == {"objectType": "StatementRef", "id": original["id"]}
    assert voiding["context"]["statement"] == {"objectType": "StatementRef", "id": correction["id"]}
    assert voiding["stored"] == statements[0]["stored"]
    assert query(session, bureau_scope, statementId=voiding_id) == voiding
    assert query(session, bureau_scope, voidedStatementId=original["id"])["result"]["duration"] == "PT45M"
    assert uuid.UUID(voiding_id).version == uuid.UUID(correction["id"]).version
    # A plain reader that drops voided statements counts the correction once.
    counted = {item["id"] for item in statements} - {item["object"]["id"] for item in statements
                                                     if item["verb"]["id"] == xapi.VOIDED_VERB}
    assert counted == {correction["id"], voiding_id}


def test_since_and_until_compare_stored_as_shown_to_the_millisecond(session, bureau_scope):
    first = log.record(session, bureau_scope, activity_of("blog_post", 1, 2, ""))["activity"]["id"]
    second = log.record(session, bureau_scope, activity_of("blog_post", 1, 2, ""))["activity"]["id"]
    base = datetime(2026, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)
    for offset, statement_id in enumerate((first, second)):
        session.execute(update(Activity).where(Activity.id == statement_id)
                        .values(recorded_at=base + timedelta(milliseconds=offset)))
    shown = query(session, bureau_scope, statementId=first)["stored"]
    assert shown == "2026-05-01T08:00:00.123Z"
    assert ids(query(session, bureau_scope, since=shown)) == [second]  # exclusive
    assert ids(query(session, bureau_scope, until=shown)) == [first]  # inclusive
    assert ids(query(session, bureau_scope, since="2026-05-01T16:00:00.123+08:00")) == [second]
    assert ids(query(session, bureau_scope, since=shown, until=shown)) == []


def test_pages_follow_stored_order_both_ways_with_voiding_statements_between(session, bureau_scope):
    recorded = [log.record(session, bureau_scope, activity_of("blog_post", 1, 2, ""))["activity"]["id"]
                for _ in range(4)]
    moderation.hide(session, bureau_scope, recorded[0], {"moderator_id": 2, "reason": "重复发布"})
    hider = session.query(Activity).filter_by(id=recorded[0]).one().hidden_statement_id
    expected = [*recorded[1:], hider]
    for ascending, order in (("true", expected), ("false", expected[::-1])):
        collected, params = [], {"limit": "2", "ascending": ascending}
        while True:
            result = statement_query.query(session, bureau_scope, params)
            collected += ids(result)
            if not result["more"]:
                break
            assert result["more"].startswith("/xapi/statements?")
            params = {key: values for key, values in
                      (pair.split("=", 1) for pair in result["more"].split("?", 1)[1].split("&"))}
        assert collected == order


def test_formats_and_parameters(session, bureau_scope, master_scope):
    post = log.record(session, bureau_scope, activity_of("blog_post", 1, 2, ""))["activity"]["id"]
    log.record(session, bureau_scope, activity_of("blog_post", 3, 2, ""))
    exact = query(session, bureau_scope, statementId=post)
    as_ids = valid_xapi(query(session, bureau_scope, statementId=post, format="ids"))
    assert as_ids["verb"] == {"id": exact["verb"]["id"]}
    assert as_ids["object"] == {"objectType": "Activity", "id": exact["object"]["id"]}
    canonical = statement_query.query(session, bureau_scope, {"statementId": post, "format": "canonical"},
                                      ["en-US", "zh-CN"])
    assert canonical["verb"]["display"] == {"en-US": "blog post"}
    assert canonical["object"]["definition"]["name"] == {"zh-CN": "博文"}  # the only language it has
    assert valid_xapi(canonical)
    with pytest.raises(InvalidInput, match="only format and attachments"):
        query(session, bureau_scope, statementId=post, limit=1)
    with pytest.raises(InvalidInput, match="format"):
        query(session, bureau_scope, format="everything")
    with pytest.raises(InvalidInput):
        query(session, bureau_scope, registration="not-a-uuid")
    assert query(session, bureau_scope, registration=str(uuid.uuid4()))["statements"] == []
    assert len(ids(query(session, bureau_scope, related_activities="true", related_agents="true"))) == 2
    assert ids(query(session, bureau_scope, agent=json.dumps({"mbox": "mailto:someone@example.org"}))) == []
    with pytest.raises(InvalidInput, match="agent"):
        query(session, bureau_scope, agent="{not json")
    with pytest.raises(InvalidInput, match="identifier"):
        query(session, bureau_scope, agent=json.dumps({"name": "nobody"}))
    school_key = xapi.extension("school")
    statements = query(session, master_scope)["statements"]
    assert [item["context"]["extensions"][school_key] for item in statements] == [MASTER_SCHOOL]
    with pytest.raises(NotFound):
        query(session, master_scope, statementId=ids(query(session, bureau_scope, agent=agent_param(3)))[0])
