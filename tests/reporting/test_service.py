"""The reporting entrypoints: worker_factory units, then the real broker and PostgreSQL."""

from __future__ import annotations

import base64
import io
import json
import time
from decimal import Decimal

import pytest
from kombu import Connection
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import worker_factory
from openpyxl import load_workbook

from services.common.events import HEADER_PREFIX, event_exchange
from services.common.scope import Scope
from services.reporting.exceptions import Forbidden, InvalidInput
from services.reporting.service import ReportingService
from tests.reporting.conftest import BUREAU, SPRING_TERM, small_city
from tests.reporting.test_projection import apply_all

BUREAU_SCOPE = Scope.bureau_admin(BUREAU).to_dict()
MARCH = {"kind": "month", "key": "2025-03"}


@pytest.fixture
def service(session):
    city = small_city()
    city.activity(101, 11, "online_course_study", "2025-03-03T09:00:00+08:00", online=Decimal("6"))
    apply_all(session, city.events)
    return worker_factory(ReportingService, db=session)


def test_worker_rules_round_trip_and_validation(service):
    saved = service.put_rules(BUREAU_SCOPE, {"rules": [
        {"id": "online_hours", "kind": "teacher_hours", "mode": "online", "period": "term", "minimum": 40}],
        "terms": [SPRING_TERM]})
    assert saved["version"] == 1
    assert service.get_rules(BUREAU_SCOPE)["rules"][0]["minimum"] == 40
    with pytest.raises(InvalidInput):
        service.put_rules(BUREAU_SCOPE, {"rules": [{"id": "x", "kind": "teacher_hours", "mode": "online",
                                                    "period": "term", "minimum": -5}]})
    with pytest.raises(Forbidden):
        service.put_rules(Scope(BUREAU, "school", 11, "write").to_dict(), {"rules": []})


def test_worker_scopes_a_school_to_itself(service):
    school = Scope(BUREAU, "school", 11).to_dict()
    assert service.teacher_progress(school, 101, MARCH)["online_hours"] == 6.0
    with pytest.raises(Forbidden):
        service.teacher_progress(school, 301, MARCH)
    with pytest.raises(Forbidden):
        service.school_compliance(Scope(BUREAU, "district", 2).to_dict(), 11, MARCH)
    district = service.get_bulletin(Scope(BUREAU, "district", 1).to_dict(), MARCH)
    assert sorted(line["school_id"] for line in district["schools"]) == [11, 12]
    with pytest.raises(InvalidInput):
        service.get_bulletin(BUREAU_SCOPE, {"kind": "month", "key": "March"})


def test_worker_export_is_a_base64_xlsx(service):
    download = service.export_bulletin(BUREAU_SCOPE, {**MARCH, "format": "xlsx"})
    workbook = load_workbook(io.BytesIO(base64.b64decode(download["content_base64"])))
    assert download["filename"] == "bulletin-2025-03.xlsx"
    assert [cell.value for cell in workbook["学校"]["A"][2:]] == [11, 12, 21]  # after the title and header


# --- over the real broker and PostgreSQL -----------------------------------------------------------


def publish(uri: str, source: str, item) -> None:
    headers = {HEADER_PREFIX + "id": item.attributes["id"], HEADER_PREFIX + "type": f"cn.lianxiao.{source}."
               + item.routing_key, HEADER_PREFIX + "time": item.attributes["time"],
               HEADER_PREFIX + "source": f"/lianxiao/{source}", HEADER_PREFIX + "specversion": "1.0"}
    with Connection(uri) as connection:
        connection.Producer().publish(
            json.dumps(item.body, ensure_ascii=False), exchange=event_exchange(source),
            declare=[event_exchange(source)], routing_key=item.routing_key, headers=headers,
            content_type="application/json", message_id=item.attributes["id"], retry=True,
        )


@pytest.mark.integration
def test_events_over_the_broker_become_progress_and_a_bulletin(runner_factory, service_config):
    runner = runner_factory(service_config, ReportingService)
    runner.start()
    city = small_city()
    city.activity(101, 11, "online_course_study", "2025-03-03T09:00:00+08:00", online=Decimal("7.5"))
    city.activity(101, 11, "offline_study", "2025-03-04T09:00:00+08:00", offline=Decimal("2"))
    uri = service_config["AMQP_URI"]
    for item in city.events + city.events[-1:]:  # the last one delivered twice
        publish(uri, "activities" if item.routing_key.startswith("activity.") else "accounts", item)
    with ClusterRpcProxy(service_config, timeout=10) as cluster:
        deadline = time.monotonic() + 15
        progress = None
        while time.monotonic() < deadline:
            try:
                progress = cluster.reporting.teacher_progress(BUREAU_SCOPE, 101, MARCH)
            except Exception:
                progress = None
            if progress and progress["offline_hours"] == 2.0:
                break
            time.sleep(0.2)
        assert progress is not None
        assert (progress["online_hours"], progress["offline_hours"]) == (7.5, 2.0)
        report = cluster.reporting.get_bulletin(BUREAU_SCOPE, MARCH)
        assert report["city"]["teachers"] == 10
        assert report["city"]["online_hours"] == 7.5
