"""Unit tests of the organisation directory (plain functions over a real SQLite database)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from services.accounts import directory
from services.accounts.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from services.accounts.models import outbox
from services.common.events import event_type_of
from services.common.scope import Scope


def events(session, routing_key=None):
    rows = session.execute(select(outbox.table).order_by(outbox.table.c.sequence)).mappings().all()
    return [
        (event_type_of(row["routing_key"]), json.loads(row["body"]))
        for row in rows
        if routing_key is None or event_type_of(row["routing_key"]) == routing_key
    ]


def test_master_school_defaults_to_a_100_mbit_link(city):
    assert city["master"]["link_capacity_bps"] == 100_000_000
    assert city["branch"]["link_capacity_bps"] == 10_000_000


def test_creating_a_bureau_twice_with_the_same_name_is_idempotent(session, city):
    again = directory.create_bureau(session, {"code": "qingshan", "name": "青山市教育局"})
    assert again["id"] == city["bureau"]["id"]
    with pytest.raises(Conflict, match="already used"):
        directory.create_bureau(session, {"code": "qingshan", "name": "另一个局"})


def test_school_codes_are_unique_within_a_bureau(session, city):
    with pytest.raises(Conflict, match="QS-01"):
        directory.create_school(session, city["admin"], {
            "bureau_id": city["bureau"]["id"], "code": "QS-01", "name": "重复学校",
        })


def test_invalid_school_names_every_bad_field(session, city):
    with pytest.raises(InvalidInput) as caught:
        directory.create_school(session, city["admin"], {
            "bureau_id": city["bureau"]["id"], "code": "bad code!", "name": "", "kind": "castle", "colour": "red",
        })
    assert set(caught.value.fields) == {"code", "name", "kind", "colour"}


def test_a_school_token_sees_only_its_own_school(session, city):
    scope = Scope(city["bureau"]["id"], "school", city["branch"]["id"], "write")
    assert [school["id"] for school in directory.list_schools(session, scope)] == [city["branch"]["id"]]
    with pytest.raises(Forbidden, match="outside this token's scope"):
        directory.get_school(session, scope, city["master"]["id"])


def test_a_district_token_sees_the_schools_of_its_district(session, city):
    scope = Scope(city["bureau"]["id"], "district", city["east"]["id"])
    ids = {school["id"] for school in directory.list_schools(session, scope)}
    assert ids == {city["master"]["id"], city["branch"]["id"]}
    with pytest.raises(Forbidden):
        directory.get_school(session, scope, city["other"]["id"])


def test_only_a_bureau_write_token_creates_schools(session, city):
    read_only = Scope(city["bureau"]["id"], "bureau", city["bureau"]["id"], "read")
    with pytest.raises(Forbidden, match="only read"):
        directory.create_school(session, read_only, {
            "bureau_id": city["bureau"]["id"], "code": "QS-09", "name": "新学校",
        })
    school_scope = Scope(city["bureau"]["id"], "school", city["branch"]["id"], "write")
    with pytest.raises(Forbidden, match="bureau token"):
        directory.create_school(session, school_scope, {
            "bureau_id": city["bureau"]["id"], "code": "QS-09", "name": "新学校",
        })


def test_alliance_includes_its_lead_school_and_announces_every_member(session, city):
    alliance = directory.create_alliance(session, city["admin"], {
        "bureau_id": city["bureau"]["id"], "name": "青山网络联校",
        "lead_school_id": city["master"]["id"], "member_school_ids": [city["branch"]["id"]],
    })
    assert alliance["member_school_ids"] == sorted([city["master"]["id"], city["branch"]["id"]])
    joined = events(session, "school.joined_alliance")
    assert {body["school_id"] for _, body in joined} == set(alliance["member_school_ids"])
    assert [body["lead"] for _, body in joined if body["school_id"] == city["master"]["id"]] == [True]


def test_teacher_lifecycle_publishes_joined_changed_left(session, city):
    scope = Scope(city["bureau"]["id"], "school", city["branch"]["id"], "write")
    teacher = directory.create_teacher(session, scope, {
        "school_id": city["branch"]["id"], "staff_number": "T001", "name": "林晓雨", "subject": "语文",
    })
    assert teacher["roles"] == ["teacher"]
    directory.update_teacher(session, scope, teacher["id"], {"roles": ["teacher", "blog_host"]})
    directory.update_teacher(session, scope, teacher["id"], {"roles": ["blog_host", "teacher"]})  # no change
    directory.update_teacher(session, scope, teacher["id"], {"active": False})
    kinds = [key for key, _ in events(session) if key.startswith("teacher.")]
    assert kinds == ["teacher.joined", "teacher.changed", "teacher.left"]
    joined_body = events(session, "teacher.joined")[0][1]
    assert "name" not in joined_body and joined_body["district_id"] == city["east"]["id"]


def test_teachers_are_paginated_with_a_stable_cursor(session, city):
    scope = city["admin"]
    for number in range(5):
        directory.create_teacher(session, scope, {
            "school_id": city["master"]["id"], "staff_number": f"M{number}", "name": f"教师{number}",
        })
    first = directory.list_teachers(session, scope, city["master"]["id"], limit=2)
    second = directory.list_teachers(session, scope, city["master"]["id"], limit=2, after_id=first["next_after_id"])
    third = directory.list_teachers(session, scope, city["master"]["id"], limit=2, after_id=second["next_after_id"])
    names = [t["staff_number"] for page in (first, second, third) for t in page["items"]]
    assert names == ["M0", "M1", "M2", "M3", "M4"]
    assert third["next_after_id"] is None


def test_research_group_requires_teachers_of_its_school(session, city):
    admin = city["admin"]
    teacher = directory.create_teacher(session, admin, {
        "school_id": city["other"]["id"], "staff_number": "X1", "name": "周可",
    })
    with pytest.raises(InvalidInput, match="not in school"):
        directory.create_group(session, admin, {
            "bureau_id": city["bureau"]["id"], "kind": "research", "school_id": city["master"]["id"],
            "name": "数学组", "member_ids": [teacher["id"]],
        })
    studio = directory.create_group(session, admin, {
        "bureau_id": city["bureau"]["id"], "kind": "studio", "name": "周可名师工作室", "leader_id": teacher["id"],
    })
    assert studio["member_ids"] == [teacher["id"]]


def test_unknown_ids_are_not_found(session, city):
    with pytest.raises(NotFound):
        directory.get_school(session, city["admin"], 99999)
    with pytest.raises(InvalidInput):
        directory.get_school(session, city["admin"], "1; drop table schools")


def test_ids_beyond_32_bits_never_reach_the_database(session, city):
    with pytest.raises(InvalidInput) as caught:
        directory.create_district(session, city["admin"], {
            "bureau_id": city["bureau"]["id"], "name": "北片区", "hub_school_id": 10**12,
        })
    assert "hub_school_id" in caught.value.fields
    with pytest.raises(NotFound):
        directory.get_school(session, city["admin"], 10**12)
