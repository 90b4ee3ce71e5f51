"""Another bureau's objects are answered exactly like missing ones (issue 12, item 15)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.accounts import directory, tokens
from services.accounts.exceptions import NotFound
from services.common.errors import LianxiaoError
from services.common.scope import Scope

MISSING = 999_999


@pytest.fixture
def other_bureau(session) -> dict:
    bureau = directory.create_bureau(session, {"code": "baihe", "name": "白河县教育局"})
    admin = Scope.bureau_admin(bureau["id"])
    school = directory.create_school(session, admin, {"bureau_id": bureau["id"], "code": "BH-01", "name": "白河小学"})
    district = directory.create_district(session, admin, {"bureau_id": bureau["id"], "name": "北片区"})
    teacher = directory.create_teacher(session, admin, {"school_id": school["id"], "staff_number": "B1",
                                                        "name": "白一"})
    alliance = directory.create_alliance(session, admin, {"bureau_id": bureau["id"], "name": "白河联校",
                                                          "lead_school_id": school["id"], "member_school_ids": []})
    return {"bureau": bureau["id"], "school": school["id"], "district": district["id"], "teacher": teacher["id"],
            "alliance": alliance["id"]}


def answer(action: Callable[[], object]) -> tuple[str, str]:
    try:
        action()
    except LianxiaoError as error:
        return type(error).__name__, error.detail.replace(str(MISSING), "<id>")
    return "allowed", ""


def test_another_bureau_s_objects_look_missing(session, city, other_bureau):
    admin = city["admin"]
    cases: dict[str, Callable[[int], object]] = {
        "school": lambda ident: directory.get_school(session, admin, ident),
        "teacher": lambda ident: directory.get_teacher(session, admin, ident),
        "bureau": lambda ident: directory.get_bureau(session, admin, ident),
        "alliance": lambda ident: directory.add_alliance_member(session, admin, ident, city["master"]["id"]),
        "district": lambda ident: tokens.issue_token(session, admin, {"scope_kind": "district", "scope_id": ident,
                                                                      "label": "x", "access": "read"}),
    }
    for name, action in cases.items():
        theirs = answer(lambda action=action, name=name: action(other_bureau[name]))
        missing = answer(lambda action=action: action(MISSING))
        assert theirs[0] == "NotFound", (name, theirs)
        assert theirs == (missing[0], missing[1].replace("<id>", str(other_bureau[name]))), name


def test_another_bureau_s_school_cannot_join_an_alliance_or_a_district(session, city, other_bureau):
    with pytest.raises(NotFound, match=f"School {other_bureau['school']} does not exist"):
        directory.create_alliance(session, city["admin"], {
            "bureau_id": city["bureau"]["id"], "name": "跨局联校", "lead_school_id": city["master"]["id"],
            "member_school_ids": [other_bureau["school"]],
        })
    with pytest.raises(NotFound, match=f"District {other_bureau['district']} does not exist"):
        directory.create_school(session, city["admin"], {
            "bureau_id": city["bureau"]["id"], "district_id": other_bureau["district"], "code": "QS-09", "name": "九校",
        })
