"""What a consumer does with an event its handler could not apply: dead-letter, retry (bounded) or wait."""

from __future__ import annotations

from sqlalchemy.exc import DataError, OperationalError

from services.common.errors import InvalidInput, ServiceUnavailable
from services.common.subscriber import MAX_ATTEMPTS, CloudEventHandler, ReceivedEvent


def event(event_id: str = "e1") -> ReceivedEvent:
    return ReceivedEvent({}, {"id": event_id, "type": "t", "time": "2025-03-01T00:00:00Z", "routing_key": "k"})


def test_input_the_handler_refuses_is_dead_lettered_at_once():
    handler = CloudEventHandler("accounts", "teacher.joined")
    assert handler.judge_failure(event(), InvalidInput("role: not one of master, branch"))[0] == "dead"


def test_other_failures_are_retried_a_bounded_number_of_times_then_dead_lettered_with_the_reason():
    handler = CloudEventHandler("accounts", "teacher.joined")
    poison = DataError("INSERT ...", {}, Exception("integer out of range"))
    outcomes = [handler.judge_failure(event(), poison) for _ in range(MAX_ATTEMPTS)]
    assert [outcome for outcome, _ in outcomes] == ["retry"] * (MAX_ATTEMPTS - 1) + ["dead"]
    assert "integer out of range" in outcomes[-1][1] and f"failed {MAX_ATTEMPTS} times" in outcomes[-1][1]
    assert handler.judge_failure(event("e2"), poison)[0] == "retry"  # counted per event


def test_an_outage_is_waited_out_however_long_and_never_counts_as_an_attempt():
    handler = CloudEventHandler("accounts", "teacher.joined")
    for _ in range(MAX_ATTEMPTS * 3):
        assert handler.judge_failure(event(), ServiceUnavailable("database down"))[0] == "requeue"
        assert handler.judge_failure(event(), OperationalError("SELECT 1", {}, Exception("gone")))[0] == "requeue"
    assert handler.attempts["e1"] == 0


def test_lag_is_the_age_of_the_oldest_event_held_unsettled():
    handler = CloudEventHandler("accounts", "teacher.joined")
    assert handler.lag_seconds(now=1000.0) == 0.0
    handler.held_times.update({1: 940.0, 2: 990.0})
    assert handler.lag_seconds(now=1000.0) == 60.0
    assert event().time is not None and ReceivedEvent({}, {"id": "x", "time": "garbage"}).time is None
