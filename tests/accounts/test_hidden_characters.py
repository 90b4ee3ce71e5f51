"""Names and staff numbers are plain, visible text (issue 12, item 12).

A NUL in a teacher name reached PostgreSQL and became a 500; a bidirectional override or a zero-width
space makes two different values look the same; a full-width staff number made a second teacher.
"""

from __future__ import annotations

import pytest

from services.accounts import directory, roster
from services.accounts.exceptions import Conflict, InvalidInput, RosterRejected
from services.activities.schemas import ActivityIn
from services.common.validation import load

from .test_roster import csv_bytes

HIDDEN = {
    "NUL": "林\x00晓", "bidi override": "林\u202e晓", "zero-width space": "林\u200b晓",
    "byte order mark": "\ufeff林晓", "line separator": "林\u2028晓",
}


@pytest.mark.parametrize("name", HIDDEN.values(), ids=HIDDEN.keys())
def test_a_teacher_name_with_hidden_characters_is_refused(session, city, name):
    with pytest.raises(InvalidInput) as caught:
        directory.create_teacher(session, city["admin"], {
            "school_id": city["master"]["id"], "staff_number": "H0201", "name": name,
        })
    assert "name" in caught.value.fields


def test_hidden_characters_are_refused_in_every_service_s_text_fields():
    statement = {"id": "3f1c6a2e-1111-4a5b-9c1d-000000000001", "kind": "blog_post", "teacher_id": 5,
                 "occurred_at": "2026-11-20T15:00:00+08:00",
                 "details": {"title": "反思\u202egnp.exe", "word_count": 1200}}
    with pytest.raises(InvalidInput) as caught:
        load(ActivityIn(), statement)
    assert "details" in caught.value.fields


def test_a_full_width_staff_number_is_the_same_teacher(session, city):
    school = city["master"]["id"]
    first = directory.create_teacher(session, city["admin"], {"school_id": school, "staff_number": "Ｈ０２０１",
                                                              "name": "林晓"})
    assert first["staff_number"] == "H0201"
    with pytest.raises(Conflict):
        directory.create_teacher(session, city["admin"], {"school_id": school, "staff_number": "H0201", "name": "林晓"})


def test_a_roster_row_with_a_full_width_staff_number_updates_the_teacher(session, city):
    school = city["master"]["id"]
    roster.import_roster(session, city["admin"], school, "r.csv", csv_bytes([["工号", "姓名"], ["H0201", "林晓"]]))
    again = roster.import_roster(session, city["admin"], school, "r.csv",
                                 csv_bytes([["工号", "姓名"], ["Ｈ０２０１", "林晓"]]))
    assert (again["created"], again["unchanged"]) == (0, 1)


def test_a_roster_row_with_a_zero_width_staff_number_or_a_nul_name_is_refused(session, city):
    rows = [["工号", "姓名"], ["H0201\u200b", "林晓"], ["H0202", "周\u202e望"]]
    with pytest.raises(RosterRejected) as caught:
        roster.import_roster(session, city["admin"], city["master"]["id"], "r.csv", csv_bytes(rows))
    assert {(problem["row"], problem["column"]) for problem in caught.value.fields["rows"]} == {
        (2, "staff_number"), (3, "name"),
    }
