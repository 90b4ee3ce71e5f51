"""The resources service over a real broker and PostgreSQL: the relay's events in (each once, bad ones set
aside with their reason), RPC answers, and its timers run through nameko's entrypoint_hook on real files."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import entrypoint_hook
from nameko.testing.utils import get_container

from services.common.errors import NotFound
from services.common.subscriber import DEAD_LETTER_REASON_HEADER, dead_letter_queue_name
from services.resources.service import ResourcesService
from tests.activities.broker import drain, publish_event, wait_for

from .conftest import recording_body

BUREAU = 2_000_000_100 + uuid.uuid4().int % 1000  # this run's own invented bureau in the shared databases


def caller(kind: str = "bureau", ident: int = BUREAU, access: str = "write") -> dict[str, Any]:
    return {"bureau_id": BUREAU, "kind": kind, "id": ident, "access": access}


def search(rpc: Any, **params: Any) -> dict[int, dict]:
    return {item["recording_key"]: item for item in rpc.resources.search_resources(caller(), params)["items"]}


@pytest.mark.integration
def test_recording_events_become_resources_once_and_retention_deletes_their_files(
        runner_factory, service_config, tmp_path: Path):
    config = {**service_config, "RECORDINGS_ROOT": str(tmp_path), "PLAYBACK_SECRET": "integration-secret"}
    runner = runner_factory(config, ResourcesService)
    runner.start()
    uri = config["AMQP_URI"]
    old = datetime.now(UTC) - timedelta(days=200)
    expiring, kept = recording_body(101, started_at=old), recording_body(102, started_at=old)
    fresh = recording_body(101, started_at=datetime.now(UTC) - timedelta(days=1))
    for body in (expiring, kept, fresh):
        (tmp_path / body["key"]).mkdir()
        (tmp_path / body["key"] / "index.m3u8").write_text("#EXTM3U\n")

    event_id = publish_event(uri, "classroom_relay", "recording.available", expiring, bureau_id=BUREAU)
    publish_event(uri, "classroom_relay", "recording.available", expiring, bureau_id=BUREAU, event_id=event_id)
    # Another event id, the same recording: still one resource.
    publish_event(uri, "classroom_relay", "recording.available", expiring, bureau_id=BUREAU)
    for body in (kept, fresh):
        publish_event(uri, "classroom_relay", "recording.available", body, bureau_id=BUREAU)
    publish_event(uri, "classroom_relay", "recording.available", {**fresh, "recording_id": 7, "key": "../../etc"},
                  bureau_id=BUREAU)

    with ClusterRpcProxy(config, timeout=10) as rpc:
        found = wait_for(lambda: (lambda items: items if len(items) == 3 else None)(search(rpc)), 20, "three resources",
                         interval=0.2)
        assert set(found) == {expiring["key"], kept["key"], fresh["key"]}
        assert found[expiring["key"]]["school_id"] == 101
        assert rpc.resources.search_resources(caller("school", 102), {})["total"] == 1
        [letter] = drain(uri, dead_letter_queue_name("resources"), 1)
        assert "key" in letter.headers[DEAD_LETTER_REASON_HEADER]
        assert json.loads(letter.body)["key"] == "../../etc"

        rpc.resources.update_resource(caller(), found[kept["key"]]["id"], {"kept": True})
        assert rpc.resources.set_retention(caller(), {"days": 30})["days"] == 30
        container = get_container(runner, ResourcesService)
        with entrypoint_hook(container, "apply_retention") as apply_retention:
            apply_retention()
        assert not (tmp_path / expiring["key"]).exists()
        assert (tmp_path / kept["key"]).exists() and (tmp_path / fresh["key"]).exists()
        assert set(search(rpc)) == {kept["key"], fresh["key"]}
        with pytest.raises(NotFound):  # the typed error crosses RPC
            rpc.resources.get_resource(caller(), found[expiring["key"]]["id"])
        with entrypoint_hook(container, "apply_retention") as apply_retention:
            apply_retention()  # nothing more to do
        assert (tmp_path / kept["key"]).exists()

        urls = rpc.resources.playback(caller("school", 101), found[fresh["key"]]["id"])
        assert f"/{fresh['key']}/program.mp4" in urls["mp4_url"]
