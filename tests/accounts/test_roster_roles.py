"""Roster roles in the documents' own words, group leaders from the roster, and the group's event.

Issue 14 items 1 and 6: document 001 names 教务主任, 副校长, 中层领导 and 教研组长 with their own
observation quotas; a roster using them must be accepted, and its 组长 must lead the group.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from services.accounts import directory, roster
from services.accounts.exceptions import RosterRejected
from services.accounts.models import Group, outbox
from tests.accounts.test_roster import csv_bytes

HEADER = ["工号", "姓名", "角色", "教研组"]


def import_rows(session, city, rows):
    return roster.import_roster(session, city["admin"], city["master"]["id"], "名册.csv", csv_bytes([HEADER, *rows]))


def roles_by_number(session, city) -> dict[str, list[str]]:
    teachers = directory.list_teachers(session, city["admin"], city["master"]["id"])["items"]
    return {teacher["staff_number"]: teacher["roles"] for teacher in teachers}


def test_the_documents_role_words_map_to_platform_roles(session, city):
    import_rows(session, city, [
        ["C001", "甲老师", "教务主任", ""],
        ["C002", "乙老师", "副校长", ""],
        ["C003", "丙老师", "中层领导", ""],
        ["C004", "丁老师", "主管教学副校长；教研组长", "物理组"],
        ["C005", "戊老师", "任课教师、备课组长", "化学组"],
    ])
    roles = roles_by_number(session, city)
    assert roles == {"C001": ["dean"], "C002": ["principal"], "C003": ["middle_manager"],
                     "C004": ["group_leader", "principal"], "C005": ["group_leader", "teacher"]}


def test_an_unknown_role_is_refused_with_the_accepted_names(session, city):
    with pytest.raises(RosterRejected) as caught:
        import_rows(session, city, [["C010", "己老师", "船长", ""]])
    reason = caught.value.fields["rows"][0]["reason"]
    assert "Unknown role '船长'" in reason
    for word in ("教务主任", "副校长", "中层领导", "组长", "group_leader", "principal"):
        assert word in reason


def test_a_roster_group_leader_leads_the_group_and_the_event_says_so(session, city):
    import_rows(session, city, [["C020", "庚老师", "教师", "数学组"], ["C021", "辛老师", "组长", "数学组"]])
    group = session.scalar(select(Group).where(Group.name == "数学组"))
    leader = next(t for t in directory.list_teachers(session, city["admin"], city["master"]["id"])["items"]
                  if t["staff_number"] == "C021")
    assert group.leader_id == leader["id"]
    rows = session.execute(select(outbox.table).where(outbox.table.c.routing_key == "group.created")).mappings()
    body = json.loads(next(iter(rows))["body"])
    # The roster's event is the body POST /v1/groups publishes: reporting needs bureau_id.
    assert body["bureau_id"] == city["bureau"]["id"] and body["school_id"] == city["master"]["id"]
    assert body["kind"] == "research" and body["name"] == "数学组"


def test_the_leader_changes_with_the_roster_and_two_leaders_are_refused(session, city):
    import_rows(session, city, [["C030", "壬老师", "组长", "语文组"], ["C031", "癸老师", "教师", "语文组"]])
    again = import_rows(session, city, [["C030", "壬老师", "教师", "语文组"], ["C031", "癸老师", "组长", "语文组"]])
    assert again["updated"] == 2
    group = session.scalar(select(Group).where(Group.name == "语文组"))
    numbers = {t["id"]: t["staff_number"]
               for t in directory.list_teachers(session, city["admin"], city["master"]["id"])["items"]}
    assert numbers[group.leader_id] == "C031"
    with pytest.raises(RosterRejected) as caught:
        import_rows(session, city, [["C030", "壬老师", "组长", "语文组"], ["C031", "癸老师", "组长", "语文组"]])
    assert "second 组长" in caught.value.fields["rows"][0]["reason"]
