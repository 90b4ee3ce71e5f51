"""Batched projection: many events per transaction give the same read models as one at a time, and a
poison event is set aside (dead-lettered with its reason) without holding the others back."""

from __future__ import annotations

import random
import time
from decimal import Decimal

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from services.common import migrations
from services.common.scope import Scope
from services.common.subscriber import DEAD_LETTER_REASON_HEADER, ReceivedEvent, dead_letter_queue_name
from services.reporting import projection, rules
from services.reporting.models import processed_events
from services.reporting.service import ReportingService
from tests.activities.broker import drain
from tests.reporting.conftest import BUREAU, SPRING_TERM, small_city
from tests.reporting.test_projection import apply_all, busy_city, snapshot
from tests.reporting.test_service import MARCH, publish


def received(items) -> list[ReceivedEvent]:
    return [ReceivedEvent(dict(item.body), dict(item.attributes)) for item in items]


def apply_in_batches(session, items, size: int) -> None:
    events = received(items)
    for start in range(0, len(events), size):
        with session.begin():
            fresh = processed_events.new_events(session, events[start:start + size])
            activity = [event for event in fresh if event.routing_key.startswith("activity.")]
            projection.apply_events(session, "accounts", [event for event in fresh if event not in activity])
            projection.apply_events(session, "activities", activity)


@pytest.mark.parametrize("size", [7, 1000])
def test_batches_with_corrections_hidings_and_repeats_equal_one_event_at_a_time(make_session, size):
    city = busy_city()
    rng = random.Random(size)
    for index in range(120):
        teacher = rng.choice([101, 102, 103, 201, 301])
        school = 11 if teacher < 200 else 12 if teacher < 300 else 21
        post = city.activity(teacher, school, rng.choice(["blog_post", "online_course_study"]),
                             f"2025-03-{1 + index % 28:02d}T10:00:00+08:00", online=Decimal("0.5"))
        if index % 9 == 0:
            city.hide(post)
        elif index % 11 == 0:  # (a statement both hidden and corrected keeps the reason that came first)
            city.activity(teacher, school, "blog_post", f"2025-04-{1 + index % 28:02d}T10:00:00+08:00",
                          online=Decimal("0.5"), corrects=post)
    body = {**rules.PRESET, "terms": [SPRING_TERM]}
    one_by_one, batched = make_session("one"), make_session("batched")
    for session in (one_by_one, batched):
        rules.save(session, BUREAU, body)
        session.commit()
    apply_all(one_by_one, city.events)
    shuffled = city.events + rng.sample(city.events, 30)  # redeliveries, some inside one batch
    rng.shuffle(shuffled)
    apply_in_batches(batched, shuffled, size)
    expected, actual = snapshot(one_by_one), snapshot(batched)
    for name in expected:
        if name not in ("rpt_rule_sets", "rpt_projection_state"):
            assert actual[name] == expected[name], name


# --- over the real broker and PostgreSQL -----------------------------------------------------------


def poisoned(item, **changes):
    """A copy of an activity event from another bureau, with `changes` to its statement."""
    copy = type(item)(item.routing_key, {**item.body}, {**item.attributes, "id": f"poison-{time.monotonic_ns()}"})
    extensions = {**copy.body["context"]["extensions"]}
    extensions[projection.EXTENSION_BASE + "bureau"] = changes.pop("bureau", 8)
    copy.body["context"] = {**copy.body["context"], "extensions": extensions}
    copy.body.update(changes)
    return copy


@pytest.mark.integration
def test_poison_events_go_to_the_dead_letter_queue_and_never_hold_back_another_bureau(
        runner_factory, service_config, database_url):
    # A reporting database of its own: the run's shared one holds other tests' teachers with these ids.
    own_database = database_url.replace("{service}", "reporting_poison")
    migrations.upgrade("reporting", own_database)
    service_config = {**service_config, "REPORTING_DATABASE_URL": own_database}
    runner = runner_factory(service_config, ReportingService)
    runner.start()
    uri = service_config["AMQP_URI"]
    city = small_city()
    template_id = city.activity(101, 11, "blog_post", "2025-03-05T20:00:00+08:00", online=Decimal("0.5"))
    template = city.events.pop()
    assert template.attributes["id"] == template_id
    for item in city.events:  # the roster first
        publish(uri, "accounts", item)
    # Another bureau's school sends activities dated at the end of time (the calendar cannot place them),
    # and one whose bureau id the database cannot store (a database error, retried then set aside).
    poison = [poisoned(template, timestamp="9999-12-31T23:00:00.000Z") for _ in range(60)]
    poison.append(poisoned(template, bureau=2**40))
    for item in poison:
        publish(uri, "activities", item)
    good = [city.activity(101, 11, "online_course_study", f"2025-03-{day:02d}T09:00:00+08:00", online=Decimal("1"))
            for day in range(1, 11)]
    for item in city.events[-len(good):]:
        publish(uri, "activities", item)
    started = time.monotonic()
    with ClusterRpcProxy(service_config, timeout=10) as cluster:
        progress = None
        while time.monotonic() - started < 20:
            progress = cluster.reporting.teacher_progress(Scope.bureau_admin(BUREAU).to_dict(), 101, MARCH)
            if progress["online_hours"] == 10.0:
                break
            time.sleep(0.1)
        assert progress is not None and progress["online_hours"] == 10.0
        elapsed = time.monotonic() - started
        dead = drain(uri, dead_letter_queue_name("reporting"), len(poison), timeout=20)
        reasons = [message.headers[DEAD_LETTER_REASON_HEADER] for message in dead]
        assert sum("cannot be placed in a period" in reason for reason in reasons) == 60, reasons[:3]
        assert [reason for reason in reasons if "failed 3 times" in reason], reasons
        # Every report says how fresh it is: the newest included event and nothing left waiting.
        deadline = time.monotonic() + 15
        while True:
            report = cluster.reporting.get_bulletin(Scope.bureau_admin(BUREAU).to_dict(), MARCH)
            if report["freshness"]["pending_events"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert report["freshness"]["pending_events"] == 0
    assert report["freshness"]["as_of"] == "2025-02-01T00:00:00Z"  # the fixtures' event time
    assert elapsed < 10, f"the good events took {elapsed:.1f} s behind the poison"
