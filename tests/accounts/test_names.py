"""teacher_names: the names reports print beside the ids their events carry, within the caller's scope."""

from __future__ import annotations

import pytest
from nameko.testing.services import worker_factory
from sqlalchemy.orm import Session

from services.accounts import directory
from services.accounts.exceptions import InvalidInput
from services.accounts.schemas import MAX_NAME_LOOKUP
from services.accounts.service import AccountsService
from services.common.scope import Scope


@pytest.fixture
def staff(session: Session, city: dict) -> dict[str, dict]:
    admin = city["admin"]
    people = {
        "master": directory.create_teacher(session, admin, {
            "school_id": city["master"]["id"], "staff_number": "M001", "name": "林晓梅"}),
        "branch": directory.create_teacher(session, admin, {
            "school_id": city["branch"]["id"], "staff_number": "B001", "name": "周建国"}),
        "other": directory.create_teacher(session, admin, {
            "school_id": city["other"]["id"], "staff_number": "O001", "name": "陈思远"}),
    }
    session.commit()
    return people


def test_a_bureau_gets_every_listed_name(session: Session, city: dict, staff: dict[str, dict]) -> None:
    ids = [staff[key]["id"] for key in ("master", "branch", "other")]
    names = directory.teacher_names(session, city["admin"], [*ids, 999_999])  # an unknown id is left out
    assert names == {
        staff["master"]["id"]: {"name": "林晓梅", "staff_number": "M001", "school_id": city["master"]["id"]},
        staff["branch"]["id"]: {"name": "周建国", "staff_number": "B001", "school_id": city["branch"]["id"]},
        staff["other"]["id"]: {"name": "陈思远", "staff_number": "O001", "school_id": city["other"]["id"]},
    }


def test_district_and_school_scopes_see_only_their_teachers(session: Session, city: dict,
                                                            staff: dict[str, dict]) -> None:
    ids = [staff[key]["id"] for key in ("master", "branch", "other")]
    bureau_id = city["bureau"]["id"]
    east = directory.teacher_names(session, Scope(bureau_id, "district", city["east"]["id"]), ids)
    assert sorted(east) == sorted([staff["master"]["id"], staff["branch"]["id"]])
    branch = directory.teacher_names(session, Scope(bureau_id, "school", city["branch"]["id"]), ids)
    assert list(branch) == [staff["branch"]["id"]]
    elsewhere = directory.teacher_names(session, Scope.bureau_admin(bureau_id + 1), ids)
    assert elsewhere == {}


def test_teachers_who_left_keep_their_names(session: Session, city: dict, staff: dict[str, dict]) -> None:
    directory.update_teacher(session, city["admin"], staff["other"]["id"], {"active": False})
    session.commit()
    names = directory.teacher_names(session, city["admin"], [staff["other"]["id"]])
    assert names[staff["other"]["id"]]["name"] == "陈思远"


@pytest.mark.parametrize("bad", [None, "1,2", [1, "2"], [0], [True], list(range(1, MAX_NAME_LOOKUP + 2))])
def test_bad_batches_are_invalid_input(session: Session, city: dict, bad: object) -> None:
    with pytest.raises(InvalidInput):
        directory.teacher_names(session, city["admin"], bad)


def test_an_empty_batch_is_answered_without_a_query(session: Session, city: dict) -> None:
    assert directory.teacher_names(session, city["admin"], []) == {}


def test_worker_entrypoint_enforces_the_scope(session: Session, city: dict, staff: dict[str, dict]) -> None:
    service = worker_factory(AccountsService, db=session)
    scope = Scope(city["bureau"]["id"], "school", city["master"]["id"]).to_dict()
    names = service.teacher_names(scope, [staff["master"]["id"], staff["other"]["id"]])
    assert names == {staff["master"]["id"]: {"name": "林晓梅", "staff_number": "M001",
                                             "school_id": city["master"]["id"]}}
    with pytest.raises(InvalidInput):
        service.teacher_names(None, [staff["master"]["id"]])


def test_school_facts_answer_only_for_schools_in_the_scope(session: Session, city: dict) -> None:
    """What the relay asks before registering a classroom: absent alike when not yours and when not there."""
    master, branch, other = (city[key]["id"] for key in ("master", "branch", "other"))
    facts = directory.school_facts(session, city["admin"], [master, other, 999_999])
    assert facts == {
        master: {"id": master, "bureau_id": city["bureau"]["id"], "district_id": city["east"]["id"],
                 "link_capacity_bps": 100_000_000},
        other: {"id": other, "bureau_id": city["bureau"]["id"], "district_id": city["west"]["id"],
                "link_capacity_bps": 10_000_000},
    }
    east = Scope(bureau_id=city["bureau"]["id"], kind="district", id=city["east"]["id"])
    assert set(directory.school_facts(session, east, [master, branch, other])) == {master, branch}
    stranger = Scope.bureau_admin(city["bureau"]["id"] + 1)
    assert directory.school_facts(session, stranger, [master, branch, other]) == {}
    with pytest.raises(InvalidInput):
        directory.school_facts(session, city["admin"], ["one"])
    service = worker_factory(AccountsService, db=session)
    assert set(service.school_facts(east.to_dict(), [master, other])) == {master}
