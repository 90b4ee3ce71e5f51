"""Times the platform cannot place are refused at the door: recorded facts and scheduled lessons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from marshmallow import ValidationError

from services.classroom_relay.schemas import SessionIn
from services.common.validation import plausible_moment, representable_moment, schedulable_moment


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-12:00", "1999-12-31T23:59:59Z"])
def test_relay_session_times_outside_the_window_are_named(text):
    lesson = {"kind": "special_delivery", "title": "示范课", "master_classroom_id": 1,
              "starts_at": text, "ends_at": text, "recurrence_until": text}
    with pytest.raises(ValidationError) as caught:
        SessionIn().load(lesson)
    assert {"starts_at", "ends_at", "recurrence_until"} <= set(caught.value.messages)


def test_windows():
    now = datetime.now(UTC)
    plausible_moment(now + timedelta(hours=23))
    schedulable_moment(now + timedelta(days=400))
    for check, moment in [(plausible_moment, now + timedelta(days=2)), (schedulable_moment, now + timedelta(days=800)),
                          (plausible_moment, datetime(1999, 12, 31, tzinfo=UTC))]:
        with pytest.raises(ValidationError):
            check(moment)
    far = datetime.fromisoformat("9999-12-31T23:59:59-12:00")
    with pytest.raises(ValidationError, match="representable"):
        representable_moment(far)
    representable_moment(datetime(1990, 1, 1, tzinfo=UTC))  # a query may reach back before 2000
