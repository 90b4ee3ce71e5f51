"""Another bureau's activities are answered exactly like missing ones (issue 12, item 15), on PostgreSQL.

Each case compares the answer for another bureau's activity with the answer for an id nobody holds,
with the id itself replaced, so "not yours" and "not there" cannot be told apart by status or words.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from services.activities import log, moderation, roster, statement_query
from services.activities.exceptions import Conflict, NotFound, UnknownTeacher
from services.common.db import make_engine
from services.common.errors import LianxiaoError
from services.common.scope import Scope
from tests.activities.activity_fixtures import BUREAU, EAST_DISTRICT, MASTER_SCHOOL, WEST_SCHOOL, teacher_body
from tests.activities.test_log import blog_post, lesson_prep

OTHER_BUREAU = BUREAU + 1
OURS = Scope(BUREAU, "bureau", BUREAU, "write", token_id=1)
THEIRS = Scope(OTHER_BUREAU, "bureau", OTHER_BUREAU, "write", token_id=2)
# Ours: MASTER (master school), HOST (a blog host at the west school); THEIR_TEACHER the other bureau's.
# Fresh ids per run: the run's database is shared with the integration tests, which announce teachers.
BASE = uuid.uuid4().int % 1_000_000 * 1000
MASTER, HOST, THEIR_TEACHER = BASE + 1, BASE + 2, BASE + 9


@pytest.fixture
def session(migrate) -> Iterator[Session]:
    """The run's PostgreSQL activities database, inside a transaction rolled back afterwards."""
    engine = make_engine(migrate("activities"))
    with engine.connect() as connection:
        transaction = connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False) as db:
            for body in (teacher_body(MASTER, MASTER_SCHOOL, EAST_DISTRICT),
                         teacher_body(HOST, WEST_SCHOOL, 320, roles=("teacher", "blog_host")),
                         {**teacher_body(THEIR_TEACHER, 4101, 410), "bureau_id": OTHER_BUREAU}):
                roster.apply_teacher_event(db, "teacher.joined", body, "2025-01-01T00:00:00Z")
            yield db
        transaction.rollback()
    engine.dispose()


@pytest.fixture
def theirs(session) -> str:
    """An activity the other bureau recorded: a blog post, so it could be commented on and hidden."""
    return log.record(session, THEIRS, blog_post(teacher_id=THEIR_TEACHER))["activity"]["id"]


def answer(action: Callable[[], Any], activity_id: str) -> tuple[str, str, Any]:
    """What the caller sees: the error's type, words and fields (the named id masked), or the outcome."""
    try:
        outcome = action()
    except LianxiaoError as error:
        return type(error).__name__, error.detail.replace(activity_id, "<id>"), error.fields
    return "allowed", "", outcome


def batch_answer(session: Session, item: dict, activity_id: str) -> tuple[str, str, Any]:
    [result] = log.record_batch(session, OURS, [item])["results"]
    return result.get("error", result["status"]), result.get("reason", "").replace(activity_id, "<id>"), \
        result.get("fields")


def test_an_id_taken_by_another_bureau_gets_the_one_answer_for_any_unusable_id(session, theirs):
    ours = log.record(session, OURS, blog_post(teacher_id=MASTER))["activity"]["id"]
    reused_theirs = answer(lambda: log.record(session, OURS, blog_post(teacher_id=MASTER, id=theirs)), theirs)
    # Our own id with other content: the caller may see it, and still gets the same words.
    other_content = blog_post(teacher_id=MASTER, id=ours, details={"title": "另一篇", "word_count": 5})
    reused_ours = answer(lambda: log.record(session, OURS, other_content), ours)
    assert reused_theirs == reused_ours
    assert reused_theirs[0] == "Conflict" and "different content" not in reused_theirs[1]
    assert batch_answer(session, blog_post(teacher_id=MASTER, id=theirs), theirs) == reused_theirs


def test_a_moved_teacher_s_old_school_record_is_not_returned_as_a_duplicate(session):
    """Same id and content, but recorded at a school this token cannot read: refused, nothing returned."""
    data = blog_post(teacher_id=MASTER)
    log.record(session, OURS, data)
    roster.apply_teacher_event(session, "teacher.changed", teacher_body(MASTER, WEST_SCHOOL, 320),
                               "2025-02-01T00:00:00Z")
    west = Scope(BUREAU, "school", WEST_SCHOOL, "write", token_id=3)
    with pytest.raises(NotFound):
        log.get_activity(session, west, data["id"])
    with pytest.raises(Conflict) as caught:
        log.record(session, west, dict(data))
    assert caught.value.detail == log.unusable_id(data["id"]).detail
    assert batch_answer(session, dict(data), data["id"])[0] == "duplicate"  # the bureau token sees it


@pytest.mark.parametrize("how", ["record", "batch"])
def test_correcting_another_bureau_s_activity_is_answered_as_correcting_a_missing_one(session, theirs, how):
    missing = str(uuid.uuid4())

    def correct(target: str) -> tuple[str, str, Any]:
        item = blog_post(teacher_id=MASTER, corrects=target)
        if how == "batch":
            return batch_answer(session, item, target)
        return answer(lambda: log.record(session, OURS, item), target)

    assert correct(theirs) == correct(missing)
    assert correct(missing)[0] == "NotFound"


@pytest.mark.parametrize("how", ["record", "batch"])
@pytest.mark.parametrize("field", ["on_activity_id", "in_reply_to_id"])
def test_commenting_on_another_bureau_s_activity_is_refused_as_on_a_missing_one(session, theirs, how, field):
    ours = log.record(session, OURS, blog_post(teacher_id=MASTER))["activity"]["id"]
    missing = str(uuid.uuid4())

    def comment_on(target: str) -> tuple[str, str, Any]:
        details = {"on_activity_id": ours, field: target, "text": "有启发"}
        item = {"kind": "comment", "teacher_id": MASTER, "occurred_at": "2025-03-05T21:00:00+08:00",
                "details": details}
        if how == "batch":
            return batch_answer(session, item, target)
        return answer(lambda: log.record(session, OURS, item), target)

    assert comment_on(theirs) == comment_on(missing)
    assert comment_on(missing)[:2] == ("NotFound", "Activity <id> (commented on) does not exist.")
    assert comment_on(ours)[0] in ("allowed", "accepted")


def test_comments_cross_schools_of_one_bureau_and_may_name_an_earlier_item_of_their_batch(session):
    """A school token comments on another school's post of its bureau: the joint schools' network."""
    west_post = log.record(session, OURS, blog_post(teacher_id=HOST))["activity"]["id"]
    master = Scope(BUREAU, "school", MASTER_SCHOOL, "write", token_id=4)
    post = blog_post(teacher_id=MASTER)
    comment = {"kind": "comment", "teacher_id": MASTER, "occurred_at": "2025-03-05T21:00:00+08:00"}
    outcome = log.record_batch(session, master, [
        {**comment, "details": {"on_activity_id": west_post, "text": "学习了"}},
        post,
        {**comment, "details": {"on_activity_id": post["id"], "text": "补充一点"}},
    ])
    assert [result["status"] for result in outcome["results"]] == ["accepted"] * 3


def test_reading_hiding_and_statements_of_another_bureau_s_activity_look_missing(session, theirs):
    missing = str(uuid.uuid4())
    cases: dict[str, Callable[[str], Any]] = {
        "get": lambda ident: log.get_activity(session, OURS, ident),
        "hide": lambda ident: moderation.hide(session, OURS, ident, {"moderator_id": HOST, "reason": "广告"}),
        "statement": lambda ident: statement_query.query(session, OURS, {"statementId": ident}),
    }
    for name, action in cases.items():
        seen = answer(lambda action=action: action(theirs), theirs)
        assert seen[0] == "NotFound", (name, seen)
        assert seen == answer(lambda action=action: action(missing), missing), name
    assert log.get_activity(session, THEIRS, theirs)["hidden"] is False


def test_another_bureau_s_teacher_is_answered_as_an_unknown_one(session):
    def record_for(teacher_id: int) -> tuple[str, str, Any]:
        return answer(lambda: log.record(session, OURS, lesson_prep(teacher_id=teacher_id, group_id=None)),
                      str(teacher_id))

    assert record_for(THEIR_TEACHER) == record_for(BASE + 999)
    assert record_for(THEIR_TEACHER)[0] == UnknownTeacher.__name__


def test_a_refused_comment_correction_does_not_use_up_its_original_in_a_batch(session, theirs):
    post = log.record(session, OURS, blog_post(teacher_id=MASTER))["activity"]["id"]
    comment = {"kind": "comment", "teacher_id": MASTER, "occurred_at": "2025-03-05T21:00:00+08:00"}
    original = log.record(session, OURS, {**comment, "details": {"on_activity_id": post, "text": "初稿"}})
    fixed = {**comment, "corrects": original["activity"]["id"]}
    outcome = log.record_batch(session, OURS, [
        {**fixed, "details": {"on_activity_id": theirs, "text": "改到别处"}},
        {**fixed, "details": {"on_activity_id": post, "text": "改稿"}},
    ])
    assert [(result["status"], result.get("error")) for result in outcome["results"]] == [
        ("rejected", "NotFound"), ("accepted", None)]
