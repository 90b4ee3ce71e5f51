"""xAPI 1.0.3 over real HTTP with a stock xAPI client (TinCanPython's RemoteLRS, HTTP Basic).

gunicorn → RPC → the activities service → PostgreSQL. Activities of every kind are recorded through
the gateway (the relay's kinds as the relay's events would record them), one is corrected and one
hidden; the client then reads everything back through every query parameter, and ralph's xAPI models
check each statement it got.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from nameko.runners import ServiceRunner
from ralph.models.xapi.base.statements import BaseXapiStatement
from sqlalchemy.orm import Session
from tincan import Activity, Agent, AgentAccount, RemoteLRS, Verb

from services.activities import log, xapi
from services.activities.schemas import KINDS
from services.common.db import make_engine
from tests.activities.every_kind import RELAY_KINDS, activity_of

from .gateway_support import City, bearer

TIMEOUT = 30
XAPI = {"X-Experience-API-Version": "1.0.3"}


@pytest.fixture(scope="module")
def recorded(gateway: str, city: City, activities_service: ServiceRunner, migrate: Callable[[str], str],
             ) -> dict[str, Any]:
    """Every kind by the east_one teacher, a correction, a hidden comment; what an LRS reader should see."""
    author, colleague = city.teachers["east_one"], city.teachers["east_two"]
    # Other modules record in this bureau too: reads that count start from here.
    since = xapi.iso(datetime.now(UTC) - timedelta(milliseconds=1))
    post = activity_of("blog_post", author, colleague, "")
    items = [post] + [activity_of(kind, author, colleague, post["id"])
                      for kind in KINDS if kind not in (*RELAY_KINDS, "blog_post")]
    items.append(activity_of("blog_post", city.teachers["west"], colleague, ""))
    token = city.tokens["bureau_write"]
    answer = requests.post(f"{gateway}/v1/activities/batch", json=items, headers=bearer(token), timeout=TIMEOUT)
    assert answer.status_code == 200 and answer.json()["accepted"] == len(items), answer.text
    engine = make_engine(migrate("activities"))
    with Session(engine) as session, session.begin():  # as the relay's session events record them
        for kind in RELAY_KINDS:
            data = activity_of(kind, author, colleague, post["id"])
            log.record_prepared(session, log.prepare(session, None, data, from_client=False), "relay")
            items.append(data)
    engine.dispose()
    original = next(item for item in items if item["kind"] == "lecture")
    correction = activity_of("lecture", author, colleague, "")
    correction["corrects"] = original["id"]
    correction["details"]["duration_minutes"] = 90
    answer = requests.post(f"{gateway}/v1/activities", json=correction, headers=bearer(token), timeout=TIMEOUT)
    assert answer.status_code == 201, answer.text
    comment = next(item for item in items if item["kind"] == "comment")
    answer = requests.post(f"{gateway}/v1/activities/{comment['id']}/hide", headers=bearer(token), timeout=TIMEOUT,
                           json={"moderator_id": colleague, "reason": "与主题无关"})
    assert answer.status_code == 200, answer.text
    counting = [item["id"] for item in items if item["id"] not in (original["id"], comment["id"])]
    return {"items": items, "post": post, "original": original, "correction": correction, "comment": comment,
            "counting": [*counting, correction["id"]], "since": since,
            "correction_voiding": xapi.correction_voiding_id(correction["id"])}


def lrs(gateway: str, token: str, **auth: str) -> RemoteLRS:
    if auth:
        return RemoteLRS(version="1.0.3", endpoint=f"{gateway}/xapi/", **auth)
    return RemoteLRS(version="1.0.3", endpoint=f"{gateway}/xapi/", username=token[:10], password=token)


def read_all(client: RemoteLRS, query: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of a query, following `more`, as JSON (each checked by ralph's model)."""
    response = client.query_statements(query)
    assert response.success, (response.response.status, response.data)
    statements = []
    while True:
        page = json.loads(response.data)
        statements += page["statements"]
        if not page["more"]:
            break
        response = client.more_statements(page["more"])
        assert response.success, response.data
    for statement in statements:
        BaseXapiStatement.model_validate(statement)
    return statements


def agent(teacher_id: int) -> Agent:
    return Agent(account=AgentAccount(home_page=xapi.HOME_PAGE, name=f"teacher/{teacher_id}"))


def test_about_and_headers(gateway: str, city: City, recorded: dict[str, Any]) -> None:
    about = lrs(gateway, city.tokens["bureau_read"]).about()
    assert about.success and "1.0.3" in about.content.version
    response = requests.get(f"{gateway}/xapi/statements", headers={**XAPI, **bearer(city.tokens["bureau_read"])},
                            params={"limit": 1}, timeout=TIMEOUT)
    assert response.headers["X-Experience-API-Version"] == "1.0.3"
    through = datetime.fromisoformat(response.headers["X-Experience-API-Consistent-Through"].replace("Z", "+00:00"))
    assert through.tzinfo is not None


def test_a_stock_client_reads_every_kind_with_voiding_in_place_of_hidden_and_corrected(
        gateway: str, city: City, recorded: dict[str, Any]) -> None:
    client = lrs(gateway, city.tokens["bureau_read"])
    statements = read_all(client, {"ascending": True, "limit": 4, "since": recorded["since"]})
    by_id = {statement["id"]: statement for statement in statements}
    voiding = {statement["object"]["id"]: statement for statement in statements
               if statement["verb"]["id"] == xapi.VOIDED_VERB}
    assert set(voiding) == {recorded["original"]["id"], recorded["comment"]["id"]}
    assert set(by_id) - {statement["id"] for statement in voiding.values()} == set(recorded["counting"])
    verbs = {kind.verb for name, kind in KINDS.items() if name != "comment"}  # the only comment was hidden
    assert {statement["verb"]["id"] for statement in statements} == verbs | {xapi.VOIDED_VERB}
    stored = [statement["stored"] for statement in statements]
    assert stored == sorted(stored)
    newest_first = read_all(client, {"limit": 0, "since": recorded["since"]})
    assert [statement["id"] for statement in newest_first] == [statement["id"] for statement in statements][::-1]

    one = client.retrieve_statement(recorded["post"]["id"])
    assert one.success and str(one.content.id) == recorded["post"]["id"]
    voided = client.retrieve_voided_statement(recorded["comment"]["id"])
    assert voided.success and str(voided.content.id) == recorded["comment"]["id"]
    gone = client.retrieve_statement(recorded["comment"]["id"])
    assert not gone.success and gone.response.status == 404
    voiding_one = client.retrieve_statement(recorded["correction_voiding"])
    assert voiding_one.success and str(voiding_one.content.object.id) == recorded["original"]["id"]


def test_every_query_parameter(gateway: str, city: City, recorded: dict[str, Any]) -> None:
    client = lrs(gateway, city.tokens["bureau_read"])
    author, west = city.teachers["east_one"], city.teachers["west"]
    by_author = read_all(client, {"agent": agent(author), "related_agents": True, "since": recorded["since"]})
    others = [item for item in by_author if item["actor"]["account"]["name"] != f"teacher/{author}"]
    # The moderator's voiding statement matches through its target, the author's comment (xAPI's rule).
    assert [(item["verb"]["id"], item["object"]["id"]) for item in others] == [
        (xapi.VOIDED_VERB, recorded["comment"]["id"])]
    assert len(by_author) == len(recorded["counting"]) - 1 + 2  # minus west's post, plus two voiding
    assert len(read_all(client, {"agent": agent(west), "since": recorded["since"]})) == 1
    comments = read_all(client, {"verb": Verb(id=KINDS["comment"].verb), "since": recorded["since"]})
    assert [statement["verb"]["id"] for statement in comments] == [xapi.VOIDED_VERB]  # the comment was hidden
    about_post = read_all(client, {"activity": Activity(id=xapi.ACTIVITY_BASE + recorded["post"]["id"]),
                                   "related_activities": True, "ascending": True})
    # The post itself, then the voiding of the (hidden) comment on it: its target's object is the post.
    assert [(item["verb"]["id"], item["object"]["id"]) for item in about_post] == [
        (KINDS["blog_post"].verb, xapi.ACTIVITY_BASE + recorded["post"]["id"]),
        (xapi.VOIDED_VERB, recorded["comment"]["id"])]
    assert read_all(client, {"registration": str(uuid.uuid4())}) == []
    everything = read_all(client, {"ascending": True})
    middle = everything[len(everything) // 2]["stored"]
    since = read_all(client, {"since": middle, "ascending": True})
    until = read_all(client, {"until": middle, "ascending": True})
    assert [item["id"] for item in until + since] == [item["id"] for item in everything]
    assert all(item["stored"] > middle for item in since) and until[-1]["stored"] == middle
    ids_only = read_all(client, {"format": "ids", "limit": 1})[0]
    assert set(ids_only["verb"]) == {"id"}
    canonical = requests.get(f"{gateway}/xapi/statements", timeout=TIMEOUT, params={
        "statementId": recorded["post"]["id"], "format": "canonical"},
        headers={**XAPI, **bearer(city.tokens["bureau_read"]), "Accept-Language": "en-US, zh-CN;q=0.5"}).json()
    assert canonical["verb"]["display"] == {"en-US": "blog post"}
    multipart = requests.get(f"{gateway}/xapi/statements", timeout=TIMEOUT,
                             params={"attachments": "true", "limit": 2},
                             headers={**XAPI, **bearer(city.tokens["bureau_read"])})
    assert multipart.status_code == 200 and multipart.headers["Content-Type"].startswith("multipart/mixed")
    part = multipart.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    assert len(json.loads(part)["statements"]) == 2


def test_scope_credentials_and_errors(gateway: str, city: City, recorded: dict[str, Any]) -> None:
    school = read_all(lrs(gateway, city.tokens["school_read"]), {})
    assert {item["context"]["extensions"][xapi.extension("school")] for item in school} == {
        city.schools["east_one"]}
    token = city.tokens["bureau_read"]
    as_user = base64.b64encode(f"{token}:".encode()).decode()
    assert lrs(gateway, token, auth=f"Basic {as_user}").retrieve_statement(recorded["post"]["id"]).success
    wrong = lrs(gateway, token, username="key", password="lx_not-a-token").query_statements({})
    assert wrong.response.status == 401 and wrong.response.getheader("X-Experience-API-Version") == "1.0.3"
    assert not lrs(gateway, city.tokens["other_bureau_write"]).retrieve_statement(recorded["post"]["id"]).success

    def get(**params: str) -> requests.Response:
        return requests.get(f"{gateway}/xapi/statements", params=params, timeout=TIMEOUT,
                            headers={**XAPI, **bearer(token)})

    for params in ({"statementId": recorded["post"]["id"], "limit": "1"}, {"nonsense": "1"},
                   {"since": "yesterday"}, {"agent": "{"}, {"format": "all"}, {"limit": "-1"}):
        response = get(**params)
        assert response.status_code == 400, (params, response.text)
        assert response.headers["X-Experience-API-Version"] == "1.0.3"
        assert response.headers["Content-Type"] == "application/problem+json"
    assert get(statementId=str(uuid.uuid4())).status_code == 404
    missing_version = requests.get(f"{gateway}/xapi/statements", headers=bearer(token), timeout=TIMEOUT)
    assert missing_version.status_code == 400
