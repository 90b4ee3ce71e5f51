"""A live lesson from end to end, through the control plane: classrooms and a dedicated delivery session over
RPC, a real ffmpeg encoder admitted with the join token's hello, two ffmpeg receivers playing the SDPs
the control plane hands out (one on a budget only the lower simulcast layer fits), the data plane's
/metrics showing each branch under its budget, and a third branch refused with the master school's
numbers. Everything on 127.0.0.1; the relay service, the data plane and ffmpeg are real."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from services.accounts.service import AccountsService
from services.classroom_relay.exceptions import AdmissionRefused, DataPlaneUnavailable
from services.classroom_relay.models import MBIT
from services.classroom_relay.service import ClassroomRelayService
from tests.ops.ops_helpers import http_get, scrape_sessions
from tests.relay.relay_harness import DataPlane, free_udp_port_pair, start_dataplane, stop_process
from tests.relay.test_end_to_end_ffmpeg import (
    FULL_FRAME_BYTES,
    HIGH_SSRC,
    LOW_SSRC,
    SMALL_FRAME_BYTES,
    _decoded_frame_sizes,
    _encoder_output,
)
from tests.relay_control.accounts_city import invent_bureau

FFMPEG = shutil.which("ffmpeg")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(40),
    pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"),
]

SECRET = "end-to-end-join-secret"
SEND_SECONDS = 6
RECEIVE_SECONDS = 2.5
HEADROOM = 0.9  # the default ADMISSION_HEADROOM
# The constrained branch's downlink: 90 % of it (540 kbit/s) fits the 200 kbit/s layer, not the 1.2 Mbit/s one.
SMALL_DOWNLINK_BPS = 600_000


@pytest.fixture
def dataplane() -> Iterator[DataPlane]:
    plane = start_dataplane()
    plane.control.close()  # the control plane under test is the data plane's only client
    try:
        yield plane
    finally:
        stop_process(plane.process)
        assert plane.process.stderr is not None
        errors = plane.process.stderr.read().decode(errors="replace")
        assert "Traceback" not in errors, errors


def eventually(fetch: Callable[[], Any], timeout: float) -> Any:
    """`fetch()` once the data plane has confirmed what it needs (it raises DataPlaneUnavailable before)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fetch()
        except DataPlaneUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def receiver(sdp: str, path: Path) -> subprocess.Popen:
    path.write_text(sdp)
    return subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", "error", "-protocol_whitelist", "file,udp,rtp", "-i", str(path),
         "-t", str(RECEIVE_SECONDS), "-f", "framecrc", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=SEND_SECONDS + 8)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate(timeout=5)
    return process.returncode, stdout.decode(), stderr.decode()


def test_dedicated_delivery_to_two_branches_through_the_control_plane(
    runner_factory: Any, service_config: dict[str, Any], dataplane: DataPlane, tmp_path: Path
) -> None:
    started_at = time.monotonic()
    # A master school (100 Mbit/s link in accounts) and three branch schools.
    city = invent_bureau(service_config, [100 * MBIT, 10 * MBIT, 10 * MBIT, 1000 * MBIT])
    school_ids = dict(zip(("master", "full", "small", "third"), city.schools, strict=True))
    school = school_ids["master"]
    admin = city.admin
    config = {**service_config, "RELAY_DATAPLANES": f"relay-0=127.0.0.1:{dataplane.control_port}",
              "RELAY_CONTROL_SECRET": dataplane.control_secret,
              "RELAY_JOIN_SECRETS": SECRET, "RELAY_STATS_INTERVAL": 0.2}
    runner_factory(config, ClassroomRelayService, AccountsService).start()
    processes: list[subprocess.Popen] = []
    try:
        with ClusterRpcProxy(config, timeout=10) as rpc:
            relay = rpc.classroom_relay

            def room(school_id: int, name: str, kind: str, **extra: Any) -> dict:
                return relay.create_classroom(admin, {"school_id": school_id, "name": name, "kind": kind, **extra})

            # A silent lesson: the master sends one camera track in two simulcast layers.
            camera = {"track": "camera", "kind": "video", "layers_bps": [200_000, 1_200_000]}
            master = room(school, "录播教室", "broadcasting", tracks=[camera])
            second_master = room(school, "录播教室二", "broadcasting")
            ports = {"full": free_udp_port_pair(), "small": free_udp_port_pair()}
            full = room(school_ids["full"], "接收教室", "receiving", receive_host="127.0.0.1",
                        receive_port=ports["full"])
            small = room(school_ids["small"], "接收教室", "receiving", receive_host="127.0.0.1",
                         receive_port=ports["small"], downlink_capacity_bps=SMALL_DOWNLINK_BPS)
            third = room(school_ids["third"], "接收教室", "receiving",
                         downlink_capacity_bps=100 * MBIT, receive_host="127.0.0.1",
                         receive_port=free_udp_port_pair())

            now = datetime.now(UTC)
            timetable = {"starts_at": now.isoformat(), "ends_at": (now + timedelta(minutes=40)).isoformat()}
            lesson = relay.create_session(admin, {
                "kind": "dedicated_delivery", "title": "四年级数学", "master_classroom_id": master["id"],
                "interactive": False,
                "branch_classroom_ids": [full["id"], small["id"]], **timetable,
            })
            live = relay.start_session(admin, lesson["id"])
            assert live["status"] == "live" and live["dataplane"] == "relay-0"
            budgets_bps = {member["classroom_id"]: member["downlink_bps"]
                           for member in live["classrooms"] if member["role"] == "branch"}
            assert budgets_bps == {full["id"]: int(10 * MBIT * HEADROOM),
                                   small["id"]: int(SMALL_DOWNLINK_BPS * HEADROOM)}

            # Each branch's SDP, as soon as the data plane has confirmed its output; receivers start first.
            sdps = {branch["id"]: eventually(lambda branch=branch: relay.get_sdp(admin, lesson["id"], branch["id"]),
                                             timeout=10)
                    for branch in (full, small)}
            receivers = {}
            for branch in (full, small):
                assert f"m=video {branch['receive_port']} RTP/AVP 96" in sdps[branch["id"]]["sdp"]
                receivers[branch["id"]] = receiver(sdps[branch["id"]]["sdp"], tmp_path / f"{branch['id']}.sdp")
            processes += receivers.values()

            # The encoder's high layer announces itself with the token's hello from its own RTP source port;
            # the low layer's source port (the camera's layer slot 1) is registered through the control plane.
            token = relay.issue_join_token(admin, lesson["id"], master["id"])
            assert token["media_address"] == ["127.0.0.1", dataplane.media_port]
            assert set(token["hellos"]) == {"camera", "camera:1"}
            media = tuple(token["media_address"])
            high_port, low_port = free_udp_port_pair(), free_udp_port_pair()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hello:
                hello.bind(("127.0.0.1", high_port))
                hello.sendto(token["hellos"]["camera"].encode("ascii"), media)
            relay.register_sender(admin, lesson["id"], master["id"],
                                  {"host": "127.0.0.1", "port": low_port, "track": "camera:1"})
            time.sleep(0.5)  # the hello arrives and the registration is pushed before the encoder binds the ports
            sender = subprocess.Popen(
                [FFMPEG, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                 "-t", str(SEND_SECONDS),
                 *_encoder_output(HIGH_SSRC, "1200k", media[1], high_port, "640x360"),
                 *_encoder_output(LOW_SSRC, "200k", media[1], low_port, "320x180")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            processes.append(sender)

            decoded = {classroom: finish(process) for classroom, process in receivers.items()}
            assert sender.poll() is None, "scrape while the encoder still sends"
            exposition = http_get(f"http://127.0.0.1:{dataplane.metrics_port}/metrics")

            for classroom, (returncode, framecrc, errors) in decoded.items():
                assert errors.strip() == "", f"classroom {classroom} decoder errors: {errors}"
                assert returncode == 0, f"classroom {classroom}: ffmpeg exited {returncode}"
                sizes = _decoded_frame_sizes(framecrc)
                assert len(sizes) >= 25, f"classroom {classroom} decoded only {len(sizes)} frames"
                expected = FULL_FRAME_BYTES if classroom == full["id"] else SMALL_FRAME_BYTES
                assert set(sizes) == {expected}, f"classroom {classroom} decoded frame sizes {set(sizes)}"

            session_key, master_key = f"session-{lesson['id']}", f"classroom-{master['id']}"

            def per_branch(metric: str) -> dict[int, float]:
                return {int(labels["classroom"].removeprefix("classroom-")): value
                        for labels, value in scrape_sessions(exposition, metric)
                        if labels["session"] == session_key and labels["source_classroom"] == master_key}

            sent = per_branch("lianxiao_relay_send_rate_bytes_per_second")
            budgets = per_branch("lianxiao_relay_budget_bytes_per_second")
            layers = per_branch("lianxiao_relay_current_layer")
            assert budgets == {classroom: bps / 8 for classroom, bps in budgets_bps.items()}
            for classroom, rate in sent.items():
                assert 0 < rate <= budgets[classroom] <= 10 * MBIT / 8, (classroom, rate, budgets[classroom])
            assert set(sent) == {full["id"], small["id"]}
            assert layers == {full["id"]: 1, small["id"]: 0}

            # A second lesson of the same master school goes to the same data plane; a third branch asking
            # for 80 Mbit/s would take the school's link past 90 % of 100 Mbit/s: refused with the numbers.
            other = relay.create_session(admin, {
                "kind": "master_teacher", "title": "五年级英语", "master_classroom_id": second_master["id"],
                **timetable,
            })
            assert relay.start_session(admin, other["id"])["dataplane"] == "relay-0"
            with pytest.raises(AdmissionRefused) as refused:
                relay.join_branch(admin, other["id"], third["id"], {"downlink_bps": 85 * MBIT})
            committed = sum(member["downlink_bps"] + member["return_bps"]
                            for member in live["classrooms"] if member["role"] == "branch")
            assert refused.value.fields == {
                "link": "school_link", "link_owner_id": school, "capacity_bps": 100 * MBIT, "headroom": HEADROOM,
                "budget_bps": 90 * MBIT, "committed_bps": committed, "requested_bps": 85 * MBIT,
            }
            assert f"school {school}" in str(refused.value) and "100.0 Mbit/s" in str(refused.value)

            for session_id in (lesson["id"], other["id"]):
                relay.end_session(admin, session_id)
            deadline = time.monotonic() + 5
            while dataplane.stats()["sessions"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert dataplane.stats()["sessions"] == {}
    finally:
        for process in processes:
            stop_process(process)
    assert time.monotonic() - started_at < 40
