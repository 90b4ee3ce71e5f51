"""One valid activity of every kind (invented content), for tests that go over all of them."""

from __future__ import annotations

import uuid
from typing import Any

LESSON = {"subject": "数学", "grade": "五年级", "title": "圆的面积"}
RELAY_KINDS = ("classroom_session_taught", "classroom_session_attended")
SESSION = {"session_id": "s-demo-1", "classroom_id": 5, "started_at": "2025-03-05T08:00:00Z",
           "ended_at": "2025-03-05T08:45:00Z"}


def details_of(kind: str, teacher_id: int, other_teacher_id: int, on_activity_id: str) -> dict[str, Any]:
    timed = {"mode": "online", "duration_minutes": 45}
    return {
        "collective_lesson_prep": {**timed, "lead_preparer_id": teacher_id, "topic": "单元整体设计",
                                   "participant_ids": [teacher_id, other_teacher_id]},
        "lesson_observation": {**timed, "observed_teacher_id": other_teacher_id, "lesson": LESSON},
        "demonstration_lesson": {**timed, "lesson": LESSON, "audience_count": 30},
        "research_lesson": {**timed, "lesson": LESSON},
        "open_lesson": {**timed, "mode": "offline", "lesson": LESSON},
        "same_lesson_different_designs": {**timed, "lesson": LESSON, "designer_ids": [teacher_id, other_teacher_id]},
        "iterative_lesson_polishing": {**timed, "lesson": LESSON, "round": 2},
        "small_research_topic": {"topic": "作业分层", "stage": "progress", "month": "2025-03", "summary": "本月进展"},
        "blog_post": {"title": "教学随笔", "word_count": 900},
        "comment": {"on_activity_id": on_activity_id, "text": "很有启发"},
        "lecture": {**timed, "title": "大单元教学", "role": "speaker"},
        "supervision_visit": {**timed, "mode": "offline", "visited_school_id": 9,
                              "report": "课堂常规落实较好，作业批改及时，建议加强分层设计。"},
        "training": {**timed, "title": "信息技术应用能力提升"},
        "online_course_study": {"title": "新课标解读", "hours": "2.5"},
        "offline_study": {"title": "校本研修", "hours": "3"},
        "classroom_session_taught": {**SESSION, "role": "master"},
        "classroom_session_attended": {**SESSION, "role": "branch"},
    }[kind]


def activity_of(kind: str, teacher_id: int, other_teacher_id: int, on_activity_id: str,
                occurred_at: str = "2025-03-05T20:00:00+08:00") -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": kind, "teacher_id": teacher_id, "occurred_at": occurred_at,
            "details": details_of(kind, teacher_id, other_teacher_id, on_activity_id)}
