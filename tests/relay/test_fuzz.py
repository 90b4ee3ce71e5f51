"""Property-based fuzzing of everything that parses bytes from the network: it must never raise, and
what it reports must stay inside the datagram."""

from __future__ import annotations

import socket

import pytest

from .relay_harness import start_dataplane, stop_process

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed in the venv")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from services.classroom_relay.dataplane import rtcp, rtp  # noqa: E402
from services.classroom_relay.dataplane.admission import parse_hello, verify_token  # noqa: E402
from services.classroom_relay.dataplane.h264 import is_keyframe_start  # noqa: E402

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
datagrams = st.binary(max_size=1600)
# Packets that start like RTP/RTCP reach deeper code than uniformly random bytes.
rtp_like = st.builds(lambda first, rest: bytes([first]) + rest, st.integers(0x80, 0xBF), st.binary(max_size=300))
rtcp_like = st.builds(
    lambda first, packet_type, length, rest: bytes([first, packet_type]) + length.to_bytes(2, "big") + rest,
    st.integers(0x80, 0x9F),
    st.integers(192, 223),
    st.integers(0, 80),
    st.binary(max_size=320),
)


@FUZZ
@given(st.one_of(datagrams, rtp_like), st.integers(0, 16))
def test_rtp_parser_stays_inside_the_datagram(packet: bytes, prefix: int) -> None:
    buffer = bytes(prefix) + packet
    header = rtp.RtpHeader()
    reason = rtp.parse_rtp(buffer, prefix, len(packet), header)
    assert 0 <= reason < len(rtp.DROP_REASONS)
    if reason == rtp.OK:
        assert prefix + 12 <= header.payload_offset
        assert header.payload_length > 0
        assert header.payload_offset + header.payload_length <= prefix + len(packet)
        assert is_keyframe_start(buffer, header.payload_offset, header.payload_length) in (True, False)


@FUZZ
@given(st.binary(max_size=400))
def test_keyframe_detection_never_raises(payload: bytes) -> None:
    assert is_keyframe_start(payload, 0, len(payload)) in (True, False)


@FUZZ
@given(st.one_of(datagrams, rtcp_like))
def test_rtcp_parser_never_raises(packet: bytes) -> None:
    items = rtcp.parse_compound(packet, 0, len(packet))
    assert items is None or isinstance(items, list)


@FUZZ
@given(st.binary(max_size=1100), st.text(max_size=200))
def test_hello_and_token_parsing_never_raise(packet: bytes, token: str) -> None:
    parsed = parse_hello(b"LXHELLO1 " + packet, 0, 9 + len(packet))
    for candidate in (parsed[0] if parsed else None, token, f"v1.{token}.{token}"):
        if candidate is not None:
            reason, claims = verify_token([b"k"], candidate)
            assert (reason == rtp.OK) == (claims is not None)


@pytest.fixture(scope="module")
def running_dataplane():
    # A real subprocess: the loop must never run inside this (possibly eventlet-patched) test process.
    plane = start_dataplane()
    plane.control.call("set_secrets", secrets=["fuzz"])
    plane.control.call("set_session", session="s1", master="master")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    plane.control.call("set_branch", session="s1", classroom="branch", address=list(receiver.getsockname()),
                       budget_bytes_per_second=1_250_000)  # fmt: skip
    yield plane
    plane.control.close()
    stop_process(plane.process)
    receiver.close()
    errors = plane.process.stderr.read().decode(errors="replace")
    assert "Traceback" not in errors, errors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(datagrams, rtp_like, rtcp_like), min_size=1, max_size=20))
def test_the_loop_survives_any_datagrams(running_dataplane, packets: list[bytes]) -> None:
    media = ("127.0.0.1", running_dataplane.media_port)
    rtcp_address = ("127.0.0.1", running_dataplane.rtcp_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hostile:
        for packet in packets:
            hostile.sendto(packet, media)
            hostile.sendto(packet, rtcp_address)
    assert running_dataplane.process.poll() is None


def test_every_fuzzed_datagram_was_accounted_for(running_dataplane) -> None:
    # Runs after the property above (file order): the process is alive and dropped, by reason, what it got.
    assert running_dataplane.process.poll() is None
    drops = running_dataplane.stats()["drops"]
    assert sum(drops.values()) > 0
    tracks = running_dataplane.stats()["sessions"]["s1"]["tracks"]
    assert tracks and all(track["packets_in"] == 0 for track in tracks)
