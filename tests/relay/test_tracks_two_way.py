"""Protocol 2 through a real data-plane process: tracks, two-way members, per-output sockets and their RTCP,
one sender per track, the media port range, and the control channel's secret and caps."""

from __future__ import annotations

import socket
import time

from services.classroom_relay.dataplane import rtcp, rtp
from services.classroom_relay.dataplane.admission import address_key, build_hello, issue_token
from services.classroom_relay.dataplane.protocol import ControlClient

from .media_peers import AUDIO_OPUS, CAMERA, member, receive
from .relay_harness import (
    SECRET,
    UdpCollector,
    free_udp_port_pair,
    rtp_sender,
    send_stream,
    start_dataplane,
    wait_until,
)

CAMERA_SSRC, AUDIO_SSRC, BRANCH_AUDIO_SSRC = 0x2001, 0x2002, 0x3001


def is_rtcp(packet: bytes) -> bool:
    return 200 <= packet[1] <= 206  # SR, RR, SDES, BYE, APP, RTPFB, PSFB (an RTP marker bit makes 224+)


def send_audio(sock: socket.socket, destination: tuple[str, int], ssrc: int, packets: int,
               packets_per_second: float = 200.0) -> None:
    """Opus-sized packets, 20 ms of 48 kHz each (960 ticks); sent faster than real time to keep tests short."""
    start = time.monotonic()
    for index in range(packets):
        packet = rtp.build_rtp(b"\x78" + bytes(79), sequence_number=index, timestamp=index * 960, ssrc=ssrc,
                               payload_type=111)
        sock.sendto(packet, destination)
        ahead = start + (index + 1) / packets_per_second - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)


def hello_from(sock: socket.socket, plane, classroom: str, track: str | None) -> None:
    token = issue_token(SECRET.encode(), "s1", classroom, 60)
    sock.sendto(build_hello(token, track), ("127.0.0.1", plane.media_port))


def lesson(plane, collectors: dict[str, UdpCollector], budget: float = 1_250_000) -> dict:
    """master publishes audio + camera; branch-a and branch-b receive both; branch-a speaks back (audio) and the
    master receives it."""
    members = [
        member("master", [AUDIO_OPUS, CAMERA],
               receive(budget, {("branch-a", "audio"): collectors["master<-a/audio"].port})),
        member("branch-a", [AUDIO_OPUS], receive(budget, {("master", "audio"): collectors["a<-audio"].port,
                                                          ("master", "camera"): collectors["a<-camera"].port})),
        member("branch-b", [], receive(budget, {("master", "audio"): collectors["b<-audio"].port,
                                                ("master", "camera"): collectors["b<-camera"].port})),
    ]  # fmt: skip
    return plane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])


def test_audio_and_camera_to_two_branches_and_a_branch_speaking_back(dataplane) -> None:
    names = ("master<-a/audio", "a<-audio", "a<-camera", "b<-audio", "b<-camera")
    collectors = {name: UdpCollector() for name in names}
    reply = lesson(dataplane, collectors)
    assert not reply["refused_outputs"]
    relay_ports = {(o["classroom"], o["source_classroom"], o["track"]): o["relay_address"][1] for o in reply["outputs"]}
    assert len(relay_ports) == 5 and len(set(relay_ports.values())) == 5  # one socket per output

    camera, audio, branch_audio = rtp_sender(), rtp_sender(), rtp_sender()
    hello_from(camera, dataplane, "master", None)  # the old form: the camera track
    hello_from(audio, dataplane, "master", "audio")
    hello_from(branch_audio, dataplane, "branch-a", "audio")
    time.sleep(0.1)
    media = ("127.0.0.1", dataplane.media_port)
    send_audio(audio, media, AUDIO_SSRC, 100)
    send_audio(branch_audio, media, BRANCH_AUDIO_SSRC, 100)
    # Small packets: the collectors read after the stream, and a loopback socket's buffer holds ~120 datagrams.
    send_stream(camera, media, CAMERA_SSRC, packets=150, packets_per_second=300, keyframe_every=50, payload_bytes=200)
    for collector in collectors.values():
        collector.collect(0.3, keep=True)

    def ssrcs(name: str) -> set[int]:
        return {int.from_bytes(packet[8:12], "big") for packet in collectors[name].packets if not is_rtcp(packet)}

    # Audio is forwarded from its first packet (no keyframe wait) and never mixed with the camera.
    for name in ("a<-audio", "b<-audio", "master<-a/audio"):
        assert len([p for p in collectors[name].packets if not is_rtcp(p)]) == 100, name
    camera_packets = len([p for p in collectors["b<-camera"].packets if not is_rtcp(p)])
    assert camera_packets == 150  # the first packet is a keyframe: nothing lost
    assert len(ssrcs("a<-audio") | ssrcs("a<-camera")) == 2
    stats = dataplane.stats("s1")["sessions"]["s1"]
    tracks = {(t["classroom"], t["track"]): t for t in stats["tracks"]}
    assert tracks[("master", "audio")]["kind"] == "audio" and tracks[("master", "audio")]["clock_rate"] == 48_000
    assert tracks[("master", "audio")]["keyframes_in"] == 0
    assert tracks[("master", "audio")]["keyframe_requests_sent"] == 0  # no PLI for audio, ever
    assert tracks[("branch-a", "audio")]["packets_in"] == 100
    outputs = {(o["classroom"], o["source_classroom"], o["track"]): o for o in stats["outputs"]}
    assert outputs[("branch-b", "master", "camera")]["first_keyframe_after_seconds"] is not None
    # No receiver has sent RTCP: loss and jitter are unknown, not zero.
    assert all(o["loss_ratio"] is None and o["jitter_seconds"] is None and not o["reported"] for o in outputs.values())
    assert stats["receivers"]["branch-a"]["budget_bytes_per_second"] == 1_250_000
    for sock in (camera, audio, branch_audio, *(c.sock for c in collectors.values())):
        sock.close()


def test_receiver_rtcp_from_rtp_port_or_port_plus_one_only(dataplane) -> None:
    rtp_port = free_udp_port_pair()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", rtp_port))
    receiver_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver_rtcp.bind(("127.0.0.1", rtp_port + 1))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    members = [member("master", [CAMERA]), member("branch-a", [], receive(1e6, {("master", "camera"): rtp_port}))]
    reply = dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
    output = reply["outputs"][0]
    relay_rtcp = tuple(output["relay_address"])
    out_ssrc = output["ssrc"]

    def report(fraction: float) -> bytes:
        block = rtcp.ReportBlock(0x77, out_ssrc, fraction, 1, 100, 4500, 0, 0)
        return rtcp.build_receiver_report(0x77, (block,))

    stranger.sendto(report(0.5), relay_rtcp)  # same host, another port: refused and counted
    receiver_rtcp.sendto(report(0.125), relay_rtcp)  # RTP port + 1 (GStreamer rtpbin, RFC 3550)

    def reported() -> dict:
        return dataplane.stats("s1")["sessions"]["s1"]["outputs"][0]

    assert wait_until(lambda: reported()["reported"], timeout=3)
    found = reported()
    assert found["loss_ratio"] == 0.125 and abs(found["jitter_seconds"] - 0.05) < 1e-9  # 4500 ticks at 90 kHz
    assert found["rtcp_from"] == ["127.0.0.1", rtp_port + 1]
    assert found["rtcp_refused"] == 1
    assert dataplane.stats()["drops"]["rtcp_wrong_port"] == 1
    receiver.sendto(report(0.25), relay_rtcp)  # rtcp-mux: from the RTP port itself
    assert wait_until(lambda: reported()["loss_ratio"] == 0.25, timeout=3)
    for sock in (receiver, receiver_rtcp, stranger):
        sock.close()


def test_a_replayed_token_from_a_second_address_never_takes_the_track(dataplane) -> None:
    collector = UdpCollector()
    members = [member("master", [CAMERA]),
               member("branch-a", [], receive(1e6, {("master", "camera"): collector.port}))]  # fmt: skip
    dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
    teacher, attacker = rtp_sender(), rtp_sender()
    hello_from(teacher, dataplane, "master", "camera")
    time.sleep(0.05)
    media = ("127.0.0.1", dataplane.media_port)
    send_stream(teacher, media, CAMERA_SSRC, packets=50, packets_per_second=500)
    hello_from(attacker, dataplane, "master", "camera")  # the same token, replayed from another port
    send_stream(attacker, media, 0x6666, packets=100, packets_per_second=500)
    send_stream(attacker, media, CAMERA_SSRC, packets=50, packets_per_second=500, first_sequence=500)
    collector.collect(0.3, keep=True)
    received = {int.from_bytes(packet[8:12], "big") for packet in collector.packets}
    assert len(received) == 1 and len(collector.packets) == 50  # only the teacher's stream, all of it
    stats = dataplane.stats()
    assert stats["drops"]["sender_taken"] == 1
    assert stats["drops"]["unknown_source"] == 150
    assert [sender["address"][1] for sender in stats["senders"]] == [teacher.getsockname()[1]]
    teacher.close()
    attacker.close()
    collector.close()


def test_every_socket_comes_from_the_media_port_range_and_exhaustion_is_refused(tmp_path) -> None:
    low = 0
    for _ in range(50):  # a free block of 6 ports
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        low = probe.getsockname()[1]
        probe.close()
        if low < 60_000:
            break
    plane = start_dataplane("--media-ports", f"{low}-{low + 4}", secret_file=str(tmp_path / "secret"))
    try:
        assert plane.media_port == low and plane.rtcp_port == low + 1
        ports = {name: free_udp_port_pair() for name in ("a", "b", "c", "d")}
        members = [member("master", [CAMERA])] + [
            member(f"branch-{name}", [], receive(1e6, {("master", "camera"): port})) for name, port in ports.items()
        ]
        reply = plane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
        assert sorted(output["relay_address"][1] for output in reply["outputs"]) == [low + 2, low + 3, low + 4]
        assert [refused["error"] for refused in reply["refused_outputs"]] == ["ports_exhausted"]
        assert plane.stats()["drops"]["ports_exhausted"] == 1
        # Freed ports are reused: drop one branch, the refused one gets its port on the next push.
        members = [m for m in members if m["classroom"] != "branch-a"]
        reply = plane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
        assert not reply["refused_outputs"] and len(reply["outputs"]) == 3
        assert plane.call("hello")["media_ports"] == [low, low + 4]
    finally:
        plane.stop()


def test_control_channel_needs_the_secret_and_caps_connections(dataplane) -> None:
    anonymous = ControlClient(port=dataplane.control_port)
    reply = anonymous.call("get_stats")
    assert reply["ok"] is False and reply["error"] == "unauthorized"
    assert anonymous.call("set_state", sessions=[])["error"] == "unauthorized"
    anonymous.close()
    idle = []
    for _ in range(12):  # the data plane admits 8 control connections at once
        connection = socket.create_connection(("127.0.0.1", dataplane.control_port), timeout=2)
        idle.append(connection)
    time.sleep(0.2)
    refused = 0
    for connection in idle:
        connection.sendall(b'{"op":"hello"}\n')
        try:
            refused += connection.recv(100) == b""
        except OSError:
            refused += 1
    assert refused >= 12 - 8 - 1  # the fixture's own client holds one slot
    for connection in idle:
        connection.close()
    time.sleep(0.2)
    assert dataplane.call("hello")["limits"]["max_outputs"] == 4096


def test_caps_on_members_and_sessions(tmp_path) -> None:
    plane = start_dataplane("--max-sessions", "2", "--max-members", "3", secret_file=str(tmp_path / "secret"))
    try:
        many = [member(f"room-{index}", [CAMERA]) for index in range(5)]
        sessions = [{"session": f"s{index}", "members": many[:2]} for index in range(3)]
        sessions[0]["members"] = many
        reply = plane.call("set_state", secrets=[SECRET], sessions=sessions)
        errors = [refused["error"] for refused in reply["refused_outputs"]]
        assert errors.count("limit_reached") == 2  # members beyond 3 in s0, and the third session
        stats = plane.stats()
        assert set(stats["sessions"]) == {"s0", "s1"} and len(stats["sessions"]["s0"]["members"]) == 3
    finally:
        plane.stop()


def test_address_key_of_port_plus_one() -> None:
    assert address_key("127.0.0.1", 5001) - address_key("127.0.0.1", 5000) == 1 << 32
