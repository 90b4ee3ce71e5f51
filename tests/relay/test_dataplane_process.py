"""The data plane as a real subprocess on 127.0.0.1: admission, budgets, malformed input, RTCP,
metrics, and the control channel across restarts. Every stream is bounded in packets and time."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import urllib.request

import pytest

from services.classroom_relay.dataplane import rtcp, rtp
from services.classroom_relay.dataplane.admission import build_hello, issue_token

from .relay_harness import (
    SECRET,
    UdpCollector,
    free_tcp_port,
    free_udp_port_pair,
    rtp_sender,
    send_stream,
    start_dataplane,
    stop_process,
    wait_until,
)

MASTER_SSRC = 0x5150


def setup_session(dataplane, collectors: dict[str, UdpCollector], budgets: dict[str, float]) -> None:
    control = dataplane.control
    assert control.call("set_session", session="s1", master="master")["ok"]
    for classroom, collector in collectors.items():
        reply = control.call(
            "set_branch", session="s1", classroom=classroom, address=["127.0.0.1", collector.port],
            budget_bytes_per_second=budgets[classroom],
        )  # fmt: skip
        assert reply["ok"], reply


def admitted_sender(dataplane, session: str = "s1", classroom: str = "master") -> socket.socket:
    sock = rtp_sender()
    token = issue_token(SECRET.encode(), session, classroom, ttl_seconds=60)
    sock.sendto(build_hello(token), ("127.0.0.1", dataplane.media_port))
    return sock


def test_only_admitted_senders_reach_a_branch(dataplane) -> None:
    branch = UdpCollector()
    setup_session(dataplane, {"branch-a": branch}, {"branch-a": 1_250_000})
    media = ("127.0.0.1", dataplane.media_port)
    strangers = {
        "none": None,
        "forged": issue_token(b"not-the-secret", "s1", "master", ttl_seconds=60),
        "expired": issue_token(SECRET.encode(), "s1", "master", ttl_seconds=-5),
        "other_session": issue_token(SECRET.encode(), "s2", "master", ttl_seconds=60),
        "garbled": "v1.AAAA",
    }
    sockets = []
    for index, token in enumerate(strangers.values()):
        sock = rtp_sender()
        sockets.append(sock)
        if token is not None:
            sock.sendto(build_hello(token), media)
        send_stream(sock, media, ssrc=0x7000 + index, packets=100, packets_per_second=1000)
    forged_registration = dataplane.control.call(
        "register_sender", session="s1", classroom="master", token=strangers["forged"], address=["127.0.0.1", 9]
    )
    branch.collect(1.0)
    drops = dataplane.stats()["drops"]
    assert branch.arrivals == []
    assert forged_registration["ok"] is False and forged_registration["error"] == "token_bad_signature"
    assert drops["unknown_source"] == 500
    assert drops["token_bad_signature"] == 2  # the hello and the registration
    assert drops["token_expired"] == 1
    assert drops["token_wrong_binding"] == 1
    assert drops["token_invalid"] == 1

    # Same setup, a sender with a valid token: it does get through, so the zero above means refusal.
    admitted = admitted_sender(dataplane)
    sender = threading.Thread(
        target=send_stream, args=(admitted, media, MASTER_SSRC, 300, 200)
    )  # fmt: skip
    sender.start()
    # An intruder spoofing the admitted SSRC from another port is still a stranger.
    intruder = rtp_sender()
    send_stream(intruder, media, ssrc=MASTER_SSRC, packets=20, packets_per_second=200)
    branch.collect(1.6)
    sender.join(timeout=5)
    assert len(branch.arrivals) > 100  # forwarding starts at the first keyframe after the first rate sample
    assert dataplane.stats()["drops"]["unknown_source"] == 520
    for sock in (*sockets, admitted, intruder):
        sock.close()
    branch.close()


@pytest.mark.parametrize("dataplane", [(), ("--no-gso",)], ids=["gso", "no-gso"], indirect=True)
def test_a_flood_never_pushes_a_branch_over_its_budget(dataplane) -> None:
    budget = 125_000.0  # 1 Mbit/s
    small, large = UdpCollector(), UdpCollector()
    setup_session(dataplane, {"small": small, "large": large}, {"small": budget, "large": 100e6 / 8})
    flood = admitted_sender(dataplane)
    packets, rate = 7_500, 3_000  # 3.6 MB/s (29 Mbit/s) for 2.5 s
    sender = threading.Thread(
        target=send_stream, args=(flood, ("127.0.0.1", dataplane.media_port), MASTER_SSRC, packets, rate),
        kwargs={"payload_bytes": 1188, "keyframe_every": 250},
    )  # fmt: skip
    sender.start()
    collectors = [threading.Thread(target=collector.collect, args=(3.5,)) for collector in (small, large)]
    for thread in collectors:
        thread.start()
    for thread in (*collectors, sender):
        thread.join(timeout=10)

    assert small.arrivals, "the small branch received nothing"
    first = small.arrivals[0][0]
    last = small.arrivals[-1][0]
    burst_allowance = budget * 0.05 + 1200  # the bucket's depth: one burst, then the rate
    # Any one-second window at the receiver: at most budget + one burst (plus scheduling slack of 2 %).
    for start_time, _size in small.arrivals:
        window = sum(size for arrival, size in small.arrivals if start_time <= arrival < start_time + 1.0)
        assert window <= (budget + burst_allowance) * 1.02, f"{window} bytes in 1 s at {start_time - first:.2f}"
    total = sum(size for _arrival, size in small.arrivals)
    assert total <= budget * (last - first) + burst_allowance * 2
    assert total >= budget * (last - first) * 0.8, "the pacer should deliver close to the budget"
    large_total = sum(size for _arrival, size in large.arrivals)
    assert large_total > 5 * total  # the same flood fits the large branch: it is the budget that held
    stats = dataplane.stats("s1")
    small_output = next(output for output in stats["sessions"]["s1"]["outputs"] if output["classroom"] == "small")
    assert small_output["pacer_drops"] > 0
    assert dataplane.stats()["drops"]["pacer_overflow"] == small_output["pacer_drops"]
    for sock in (flood, small.sock, large.sock):
        sock.close()


@pytest.mark.parametrize("dataplane", [(), ("--no-gso",)], ids=["gso", "no-gso"], indirect=True)
def test_malformed_packets_are_counted_by_reason_and_the_loop_survives(dataplane) -> None:
    branch = UdpCollector()
    setup_session(dataplane, {"branch-a": branch}, {"branch-a": 1_250_000})
    sender = admitted_sender(dataplane)
    media = ("127.0.0.1", dataplane.media_port)
    header = struct.Struct("!BBHII")
    malformed = {
        "too_short": [b"", b"\x80", b"\x80\x60\x00\x01"],
        "bad_version": [header.pack(0x40, 96, 1, 1, MASTER_SSRC) + b"xx"] * 2,
        "bad_csrc_length": [header.pack(0x8F, 96, 1, 1, MASTER_SSRC) + b"x" * 4],
        "bad_extension_length": [header.pack(0x90, 96, 1, 1, MASTER_SSRC) + b"\xbe\xde\x00\x09abcd"],
        "bad_padding": [header.pack(0xA0, 96, 1, 1, MASTER_SSRC) + b"ab\x00"] * 4,
        "empty_payload": [header.pack(0x80, 96, 1, 1, MASTER_SSRC)],
        "too_large": [header.pack(0x80, 96, 1, 1, MASTER_SSRC) + bytes(3000)],
        "bad_rtcp": [b"\x81\xc9\x00\x09\x00\x00\x00\x01", b"\x80\xcd\xff\xff"],
    }
    for packets in malformed.values():
        for packet in packets:
            sender.sendto(packet, media)
    assert wait_until(lambda: dataplane.stats()["drops"]["too_large"] == 1)
    drops = dataplane.stats()["drops"]
    for reason, packets in malformed.items():
        assert drops[reason] == len(packets), (reason, drops)
    # Still forwarding afterwards.
    send_stream(sender, media, MASTER_SSRC, packets=120, packets_per_second=200)
    branch.collect(0.5)
    assert len(branch.arrivals) > 20
    assert dataplane.process.poll() is None
    sender.close()
    branch.close()


def test_rtcp_nack_pli_and_receiver_reports(dataplane) -> None:
    rtp_port = free_udp_port_pair()
    branch, branch_rtcp = UdpCollector(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    branch.sock.close()
    branch.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    branch.sock.bind(("127.0.0.1", rtp_port))
    branch.port = rtp_port
    branch_rtcp.bind(("127.0.0.1", rtp_port + 1))
    setup_session(dataplane, {"branch-a": branch}, {"branch-a": 1_250_000})
    sender = admitted_sender(dataplane)
    media = ("127.0.0.1", dataplane.media_port)
    send_stream(sender, media, MASTER_SSRC, packets=300, packets_per_second=300, keyframe_every=30)
    # The encoder's own sender report (rtcp-mux on the media port): the relay's reports carry its mapping.
    sender.sendto(rtcp.build_sender_report(MASTER_SSRC, *rtcp.ntp_now(), 299 // 5 * 3600, 300, 300_000), media)
    branch.collect(0.3, keep=True)
    assert len(branch.packets) > 30
    parsed = rtp.RtpHeader()
    assert rtp.parse_rtp(branch.packets[-1], 0, len(branch.packets[-1]), parsed) == rtp.OK
    out_ssrc, wanted = parsed.ssrc, parsed.sequence_number - 3
    relay_rtcp = ("127.0.0.1", dataplane.rtcp_port)

    # NACK: the cached packet comes back with the sequence number asked for.
    branch.sock.sendto(rtcp.build_nack(0x99, out_ssrc, [wanted]), relay_rtcp)
    branch.packets.clear()
    branch.collect(0.5, keep=True)
    assert rtp.parse_rtp(branch.packets[0], 0, len(branch.packets[0]), parsed) == rtp.OK
    assert parsed.sequence_number == wanted and parsed.ssrc == out_ssrc

    # The branch's RTCP came from its RTP port (symmetric RTCP), so the relay's sender reports go there
    # now (RTP port + 1 before a receiver has reported); answer one so RTT can be measured.
    branch.packets.clear()
    branch.arrivals.clear()
    branch.collect(1.3, keep=True)
    report_index = max(index for index, packet in enumerate(branch.packets) if packet[1] == rtcp.PT_SR)
    report, received_at = branch.packets[report_index], branch.arrivals[report_index][0]
    items = rtcp.parse_compound(report, 0, len(report))
    sender_report = next(item for item in items if isinstance(item, rtcp.SenderReport))
    assert sender_report.sender_ssrc == out_ssrc
    # ...followed by an SDES naming the source classroom as CNAME (what GStreamer's rtpbin syncs streams by).
    assert report.endswith(rtcp.build_sdes_cname(out_ssrc, "master")), report.hex()
    delay_since_report = int((time.time() - received_at) * 65536)
    block = rtcp.ReportBlock(0x99, out_ssrc, 0.25, 5, 1000, 900, sender_report.ntp_middle_32, delay_since_report)
    branch.sock.sendto(rtcp.build_receiver_report(0x99, (block,)), relay_rtcp)

    # PLI burst from the branch: the sender of the layer gets at most one per 500 ms.
    sender.settimeout(0.05)
    while True:  # discard what reached the sender so far (initial keyframe request, receiver reports)
        try:
            sender.recv(2048)
        except TimeoutError:
            break
    time.sleep(0.55)
    for _ in range(10):
        branch.sock.sendto(rtcp.build_pli(0x99, out_ssrc), relay_rtcp)
        time.sleep(0.02)
    plis = 0
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        try:
            data = sender.recv(2048)
        except TimeoutError:
            continue
        parsed_items = rtcp.parse_compound(data, 0, len(data)) or []
        plis += sum(1 for item in parsed_items if isinstance(item, rtcp.KeyframeRequest))
    assert plis == 1

    output = dataplane.stats("s1")["sessions"]["s1"]["outputs"][0]
    assert output["nacks_received"] == 1 and output["retransmissions"] == 1
    assert output["plis_received"] == 10
    assert output["loss_ratio"] == 0.25
    assert abs(output["jitter_seconds"] - 0.01) < 1e-9
    assert output["rtt_seconds"] is not None and 0 <= output["rtt_seconds"] < 1.0
    for sock in (sender, branch.sock, branch_rtcp):
        sock.close()


def test_metrics_endpoint(dataplane) -> None:
    branch = UdpCollector()
    setup_session(dataplane, {"branch-a": branch}, {"branch-a": 1_250_000})
    sender = admitted_sender(dataplane)
    send_stream(sender, ("127.0.0.1", dataplane.media_port), MASTER_SSRC, packets=200, packets_per_second=400)
    rtp_sender().sendto(b"\x80\x60" + bytes(20), ("127.0.0.1", dataplane.media_port))
    time.sleep(0.6)
    with urllib.request.urlopen(f"http://127.0.0.1:{dataplane.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    service = 'service="classroom_relay_dataplane"'
    assert f'lianxiao_relay_link_target_bytes_per_second{{link="master_school",{service}}} 1.25e+07' in text
    assert f'lianxiao_relay_link_target_bytes_per_second{{link="receiving_downlink",{service}}} 1.25e+06' in text
    sent = [line for line in text.splitlines() if line.startswith("lianxiao_relay_sent_bytes_total{")]
    assert len(sent) == 1 and 'classroom="branch-a"' in sent[0] and 'session="s1"' in sent[0]
    assert 'track="camera"' in sent[0] and 'kind="video"' in sent[0] and 'source="camera"' in sent[0]
    assert float(sent[0].rsplit(" ", 1)[1]) > 0
    assert 'lianxiao_relay_dropped_packets_total{reason="unknown_source",' in text
    for name in ("received_bytes_total", "current_layer", "budget_bytes_per_second", "budget_used_ratio",
                 "freezes_total", "nacks_total", "plis_total", "received_jitter_seconds",
                 "received_keyframes_total"):  # fmt: skip
        assert f"lianxiao_relay_{name}{{" in text, name
    # The branch never sent a receiver report: its loss and jitter are unknown, so absent (not 0).
    assert "lianxiao_relay_loss_ratio{" not in text and "lianxiao_relay_jitter_seconds{" not in text
    sender.close()
    branch.close()


def test_control_channel_is_idempotent_and_survives_a_restart(tmp_path) -> None:
    control_port = free_tcp_port()
    secret_file = str(tmp_path / "control.secret")
    plane = start_dataplane("--control-port", str(control_port), secret_file=secret_file)
    assert os.stat(secret_file).st_mode & 0o777 == 0o600  # generated, readable by its owner only
    collector = UdpCollector()
    state = {
        "secrets": [SECRET],
        "sessions": [
            {
                "session": "s1",
                "master": "master",
                "branches": [
                    {"classroom": "branch-a", "address": ["127.0.0.1", collector.port],
                     "budget_bytes_per_second": 1_250_000, "uplink_budget_bytes_per_second": 3_125_000,
                     "return_address": ["127.0.0.1", collector.port + 2]},
                ],
                "senders": [{"classroom": "master", "address": ["127.0.0.1", 40_000],
                             "token": issue_token(SECRET.encode(), "s1", "master", 60)}],
            }
        ],
    }  # fmt: skip
    try:
        client = plane.control
        first_instance = client.call("hello")["instance"]
        assert client.call("set_state", **state)["ok"]
        before = client.call("get_stats")["stats"]
        assert client.call("set_state", **state)["ok"]  # same desired state again: nothing changes
        after = client.call("get_stats")["stats"]
        outputs_before = {(o["classroom"], o["source_classroom"]): o for o in before["sessions"]["s1"]["outputs"]}
        outputs_after = {(o["classroom"], o["source_classroom"]): o for o in after["sessions"]["s1"]["outputs"]}
        assert set(outputs_before) == {("branch-a", "master"), ("master", "branch-a")}
        for key, output in outputs_before.items():
            assert outputs_after[key]["relay_address"] == output["relay_address"]
            assert outputs_after[key]["ssrc"] == output["ssrc"]
        assert [s["address"] for s in after["senders"]] == [["127.0.0.1", 40_000]]

        bad = client.call("set_branch", session="nope", classroom="x", address=["127.0.0.1", 1],
                          budget_bytes_per_second=1)  # fmt: skip
        assert bad["ok"] is False and bad["error"] == "rejected"
        assert client.call("set_branch", session="s1", classroom="x", address="nowhere")["error"] == "bad_request"
        assert client.call("teleport")["error"] == "unknown_op"

        # The data plane restarts: the same client reconnects, sees a new instance, pushes its state.
        stop_process(plane.process)
        plane = start_dataplane("--control-port", str(control_port), secret_file=secret_file)
        hello = client.call("hello")
        assert hello["ok"] and hello["instance"] != first_instance
        assert client.call("get_stats")["stats"]["sessions"] == {}
        assert client.call("set_state", **state)["ok"]
        assert set(client.call("get_stats")["stats"]["sessions"]) == {"s1"}
        state["sessions"] = []
        assert client.call("set_state", **state)["ok"]
        assert client.call("get_stats")["stats"]["sessions"] == {}
        client.close()
    finally:
        plane.control.close()
        stop_process(plane.process)
        collector.close()
