"""A small fictional bureau for newcomers (`make demo`); every name in it is invented."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.accounts import directory, tokens
from services.accounts.models import Bureau
from services.common.scope import Scope

DEMO_BUREAU = {"code": "demo-qingshan", "name": "青山市教育局（演示）"}
DEMO_SCHOOLS = [
    # code, name, kind, district
    ("QS-01", "青山实验中学", "master", "东片区"),
    ("QS-02", "柳湾小学", "branch", "东片区"),
    ("QS-03", "石桥小学", "branch", "东片区"),
    ("QS-04", "西岭中学", "ordinary", "西片区"),
]
DEMO_TEACHERS = [
    # school code, staff number, name, subject, grade, roles, research group
    ("QS-01", "T0101", "林晓雨", "语文", "七年级", ["teacher", "group_leader"], "语文组"),
    ("QS-01", "T0102", "许文涛", "数学", "七年级", ["teacher", "blog_host"], "数学组"),
    ("QS-01", "T0103", "沈佳宁", "英语", "八年级", ["teacher"], "英语组"),
    ("QS-01", "T0104", "韩志远", "数学", "八年级", ["principal", "teacher"], "数学组"),
    ("QS-02", "T0201", "贺小满", "语文", "三年级", ["teacher", "moderator"], "语文组"),
    ("QS-02", "T0202", "程一帆", "数学", "四年级", ["teacher"], "数学组"),
    ("QS-03", "T0301", "白若溪", "英语", "五年级", ["teacher"], "英语组"),
    ("QS-03", "T0302", "聂云开", "科学", "五年级", ["dean", "teacher"], "科学组"),
    ("QS-04", "T0401", "邵青禾", "物理", "九年级", ["teacher", "middle_manager"], "理科组"),
]


def load_demo_bureau(session: Session) -> dict[str, Any]:
    """Create the demo bureau once; every call issues fresh tokens to try the API with."""
    bureau = session.scalar(select(Bureau).where(Bureau.code == DEMO_BUREAU["code"]))
    if bureau is None:
        bureau_id = directory.create_bureau(session, DEMO_BUREAU)["id"]
        admin = Scope.bureau_admin(bureau_id)
        districts = {
            name: directory.create_district(session, admin, {"bureau_id": bureau_id, "name": name})["id"]
            for name in ("东片区", "西片区")
        }
        schools = {
            code: directory.create_school(session, admin, {
                "bureau_id": bureau_id, "code": code, "name": name, "kind": kind, "district_id": districts[district],
            })["id"]
            for code, name, kind, district in DEMO_SCHOOLS
        }
        directory.create_alliance(session, admin, {
            "bureau_id": bureau_id, "name": "青山网络联校", "lead_school_id": schools["QS-01"],
            "member_school_ids": [schools["QS-02"], schools["QS-03"]],
        })
        groups: dict[tuple[str, str], list[int]] = {}
        for school_code, staff_number, name, subject, grade, roles, group in DEMO_TEACHERS:
            teacher = directory.create_teacher(session, admin, {
                "school_id": schools[school_code], "staff_number": staff_number, "name": name,
                "subject": subject, "grade": grade, "roles": roles,
            })
            groups.setdefault((school_code, group), []).append(teacher["id"])
        for (school_code, group), member_ids in groups.items():
            directory.create_group(session, admin, {
                "bureau_id": bureau_id, "kind": "research", "school_id": schools[school_code], "name": group,
                "member_ids": member_ids, "leader_id": member_ids[0],
            })
    else:
        bureau_id = bureau.id
    admin = Scope.bureau_admin(bureau_id)
    school_ids = {school["code"]: school["id"] for school in directory.list_schools(session, admin)}
    bureau_token = tokens.issue_token(session, admin, {
        "scope_kind": "bureau", "scope_id": bureau_id, "label": "demo bureau admin", "access": "write", "ttl_days": 30,
    })
    school_token = tokens.issue_token(session, admin, {
        "scope_kind": "school", "scope_id": school_ids["QS-02"], "label": "demo 柳湾小学", "access": "write",
        "ttl_days": 30,
    })
    return {
        "bureau_id": bureau_id,
        "schools": school_ids,
        "bureau_token": bureau_token["token"],
        "school_token_QS-02": school_token["token"],
        "try": f"curl -H 'Authorization: Bearer {school_token['token']}' "
        f"http://127.0.0.1:8080/v1/schools/{school_ids['QS-02']}/teachers",
    }
