"""The control plane over the real RabbitMQ and PostgreSQL, driving the real data-plane process."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from kombu import Connection, Consumer, Queue
from nameko.standalone.rpc import ClusterRpcProxy

from services.accounts.service import AccountsService
from services.classroom_relay.exceptions import AdmissionRefused, DataPlaneUnavailable, NotFound
from services.classroom_relay.models import MBIT
from services.classroom_relay.service import ClassroomRelayService
from services.common.events import event_exchange, event_type_of, read_cloud_event_headers
from tests.activities.contract import contract_errors

from .accounts_city import invent_bureau
from .dataplane_process import free_port, start, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def dataplane():
    processes: list = []
    yield processes
    for process in processes:
        errors = process.stop()
        assert "Traceback" not in errors, errors


def members_of(plane, key: str) -> list[str]:
    return sorted((plane.stats()["sessions"].get(key) or {}).get("members") or [])


def test_sessions_reach_the_data_plane_survive_its_restart_and_reconcile_and_publish_events(
    runner_factory, service_config, tmp_path, unique
):
    """The control channel is authenticated with the secret the data plane generated into its 0600 file; the
    control plane reads that file, pushes the live session, pushes it again after a data-plane restart, and
    puts back a session someone removed on the data plane behind its back (periodic reconciliation)."""
    secret_file = str(tmp_path / "relay-control.secret")
    plane = start(secret_file=secret_file)
    planes = [plane]
    city = invent_bureau(service_config, [100 * MBIT, 50 * MBIT, 50 * MBIT, 50 * MBIT])
    admin = city.admin
    config = {**service_config, "RELAY_CONTROL_ADDRESS": f"127.0.0.1:{plane.control_port}",
              "RELAY_CONTROL_SECRET_FILE": secret_file, "RELAY_JOIN_SECRETS": "integration-secret",
              "RELAY_STATS_INTERVAL": 0.2, "RELAY_RECONCILE_INTERVAL": 0.5}
    queue = Queue(unique("relay-subscriber-"), exchange=event_exchange("classroom_relay"), routing_key="#",
                  durable=False, auto_delete=True)
    received: list = []
    try:
        with Connection(config["AMQP_URI"]) as connection:
            queue(connection).declare()
            runner_factory(config, ClassroomRelayService, AccountsService).start()
            with ClusterRpcProxy(config, timeout=10) as rpc:
                relay = rpc.classroom_relay
                master = relay.create_classroom(admin, {
                    "school_id": city.schools[0], "name": "录播教室", "kind": "broadcasting",
                    "receive_host": "127.0.0.1", "receive_port": free_port(socket.SOCK_DGRAM) & ~1 & 0x7FFE,
                })
                assert master["school_link_capacity_bps"] == 100 * MBIT  # accounts' figure
                branches = [
                    relay.create_classroom(admin, {
                        "school_id": city.schools[index], "name": f"接收教室{index}", "kind": "receiving",
                        "downlink_capacity_bps": 50 * MBIT, "receive_host": "127.0.0.1",
                        "receive_port": 42000 + 8 * index,
                    })
                    for index in (1, 2, 3)
                ]
                with pytest.raises(NotFound):  # another bureau's school, whatever the body says
                    relay.create_classroom(admin, {"school_id": city.other_bureau_school, "name": "冒名",
                                                   "kind": "receiving", "bureau_id": city.bureau_id})
                now = datetime.now(UTC)
                lesson = relay.create_session(admin, {
                    "kind": "master_teacher", "title": "五年级英语", "master_classroom_id": master["id"],
                    "teacher_id": city.teachers[0], "starts_at": now.isoformat(),
                    "ends_at": (now + timedelta(minutes=40)).isoformat(), "branch_bps": 40 * MBIT,
                    "branch_classroom_ids": [branches[0]["id"], branches[1]["id"]],
                })
                started = relay.start_session(admin, lesson["id"])
                assert started["status"] == "live"
                key = f"session-{lesson['id']}"
                wanted = sorted(f"classroom-{room['id']}" for room in [master, *branches[:2]])
                wait_for(lambda: members_of(plane, key) == wanted, timeout=10)
                outputs = plane.stats()["sessions"][key]["outputs"]
                assert sorted((output["classroom"], output["track"]) for output in outputs) == sorted(
                    (room, track) for room in wanted if room != f"classroom-{master['id']}"
                    for track in ("audio", "camera"))

                # Someone with the secret removes the live session on the data plane: it comes back.
                plane.call("remove_session", session=key)
                assert members_of(plane, key) == []
                wait_for(lambda: members_of(plane, key) == wanted, timeout=5)

                # The data plane restarts (and forgets everything): the control plane pushes its state again.
                first_instance = plane.stats()["instance"]
                assert "Traceback" not in plane.stop()
                planes.clear()
                restarted = start(plane.control_port, secret_file)
                planes.append(restarted)
                assert restarted.stats()["instance"] != first_instance
                wait_for(lambda: members_of(restarted, key) == wanted, timeout=15)
                status = wait_for(lambda: (s := relay.relay_status(admin))["connected"] and s, timeout=10)
                assert [(entry["name"], entry["media_address"]) for entry in status["dataplanes"]] == [
                    ("default", ["127.0.0.1", restarted.media_port])]

                # A third 40 Mbit/s branch would take the master school past 90 % of its 100 Mbit/s.
                with pytest.raises(AdmissionRefused) as refused:
                    relay.join_branch(admin, lesson["id"], branches[2]["id"])
                assert refused.value.fields["capacity_bps"] == 100 * MBIT
                assert refused.value.fields["committed_bps"] == 80 * MBIT
                assert "100.0 Mbit/s" in str(refused.value) and "80.0 Mbit/s" in str(refused.value)

                def classroom_sdp() -> dict | None:
                    try:
                        return relay.get_sdp(admin, lesson["id"], branches[0]["id"])
                    except DataPlaneUnavailable:  # the relay confirms a branch's stream on its next push
                        return None

                sdp = wait_for(classroom_sdp, timeout=10)
                assert sdp["content_type"] == "application/sdp"
                assert "m=audio 42008 RTP/AVP 97" in sdp["sdp"] and "m=video 42010 RTP/AVP 96" in sdp["sdp"]
                token = relay.issue_join_token(admin, lesson["id"], master["id"])
                assert token["media_address"] == ["127.0.0.1", restarted.media_port]

                relay.leave_branch(admin, lesson["id"], branches[1]["id"])
                remaining = sorted(set(wanted) - {f"classroom-{branches[1]['id']}"})
                wait_for(lambda: members_of(restarted, key) == remaining, timeout=10)
                relay.end_session(admin, lesson["id"])
                wait_for(lambda: key not in restarted.stats()["sessions"], timeout=10)

            with Consumer(connection, [queue], callbacks=[lambda body, message: received.append(message)],
                          accept=["json"]):
                deadline = time.monotonic() + 10
                while len(received) < 6 and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.5)
    finally:
        for process in planes:
            errors = process.stop()
            assert "Traceback" not in errors, errors
    keys = [event_type_of(message.delivery_info["routing_key"]) for message in received]
    assert {message.delivery_info["routing_key"].split(".")[1] for message in received} == {str(city.bureau_id)}
    for message in received:  # as docs/events/asyncapi.yaml says
        assert contract_errors("classroom_relay.events", message.delivery_info["routing_key"], message.headers,
                               message.body) == [], message.delivery_info["routing_key"]
    assert keys == ["session.started", "classroom.joined", "classroom.joined", "classroom.left", "classroom.left",
                    "session.ended"]
    ended = json.loads(received[-1].body)
    assert ended["teacher_id"] == city.teachers[0] and ended["role"] == "master" and ended["ended_at"] is not None
    assert ended["scheduled_ends_at"] is not None and ended["media_seconds"] == 0.0  # no encoder ever sent
    left_early = json.loads(received[3].body)
    assert left_early["classroom_id"] == branches[1]["id"] and left_early["school_id"] == city.schools[2]
    attributes = read_cloud_event_headers(received[0].headers)
    assert attributes["type"] == "cn.lianxiao.classroom_relay.session.started"


def test_sessions_are_placed_on_several_data_planes_and_each_gets_only_its_own(
    runner_factory, service_config, dataplane, tmp_path
):
    from services.common.metrics import registry_for

    secret_file = str(tmp_path / "relay-control.secret")  # one secret for the fleet (a Kubernetes Secret)
    dataplane.extend([start(0, secret_file), start(0, secret_file)])
    planes = {"relay-0": dataplane[0], "relay-1": dataplane[1]}
    city = invent_bureau(service_config, [100 * MBIT, 100 * MBIT, 50 * MBIT, 50 * MBIT])
    admin = city.admin
    fleet = ",".join(f"{name}=127.0.0.1:{plane.control_port}" for name, plane in planes.items())
    config = {**service_config, "RELAY_DATAPLANES": f"{fleet},relay-away=127.0.0.1:{free_port()}",
              "RELAY_CONTROL_SECRET_FILE": secret_file,
              "RELAY_JOIN_SECRETS": "integration-secret", "RELAY_STATS_INTERVAL": 0.2}
    runner = runner_factory(config, ClassroomRelayService, AccountsService)
    runner.start()
    with ClusterRpcProxy(config, timeout=10) as rpc:
        relay = rpc.classroom_relay
        status = wait_for(lambda: (s := relay.relay_status(admin)) and all(
            entry["connected"] for entry in s["dataplanes"] if entry["name"] != "relay-away") and s, timeout=10)
        assert [(entry["name"], entry["connected"]) for entry in status["dataplanes"]] == [
            ("relay-0", True), ("relay-1", True), ("relay-away", False)]
        now = datetime.now(UTC)
        lessons = {}
        for offset, school in enumerate(city.schools[:2]):
            master = relay.create_classroom(admin, {"school_id": school, "name": "录播教室",
                                                    "kind": "broadcasting"})
            branch = relay.create_classroom(admin, {
                "school_id": city.schools[2 + offset], "name": "接收教室", "kind": "receiving",
                "receive_host": "127.0.0.1", "receive_port": 43000 + 8 * offset})
            created = relay.create_session(admin, {
                "kind": "master_teacher", "title": "公开课", "master_classroom_id": master["id"],
                "starts_at": now.isoformat(), "ends_at": (now + timedelta(minutes=40)).isoformat(),
                "branch_classroom_ids": [branch["id"]]})
            lessons[relay.start_session(admin, created["id"])["dataplane"]] = (created["id"], master["id"], school)
        # The first school went to relay-0 (configuration order breaks the tie); the second to relay-1,
        # which had more free budget left; the data plane that does not answer took nothing.
        assert sorted(lessons) == ["relay-0", "relay-1"]
        registry = registry_for(next(iter(runner.containers)))
        for name, (session_id, master_id, school) in lessons.items():
            wanted = {f"session-{session_id}"}
            wait_for(lambda plane=planes[name], wanted=wanted: set(plane.stats()["sessions"]) == wanted, timeout=10)
            token = relay.issue_join_token(admin, session_id, master_id)
            assert (token["dataplane"], token["media_address"]) == (name, ["127.0.0.1", planes[name].media_port])
            info = {"session": f"session-{session_id}", "dataplane": name,
                    "master_classroom": f"classroom-{master_id}", "master_school": str(school)}
            wait_for(lambda info=info: registry.get_sample_value("lianxiao_relay_session_info", info) == 1,
                     timeout=5)
            # The source on the master's uplink; 9 Mbit/s to the branch on the master school's link.
            assert registry.get_sample_value("lianxiao_relay_school_link_committed_bytes_per_second",
                                             {"school": str(school)}) == 9 * MBIT / 8
        for session_id, _master, _school in lessons.values():
            relay.end_session(admin, session_id)
        for plane in planes.values():
            wait_for(lambda plane=plane: plane.stats()["sessions"] == {}, timeout=10)
