"""Join tokens, sender pinning, and the receiving classroom's SDP."""

from __future__ import annotations

import pytest

from services.classroom_relay.dataplane import rtp
from services.classroom_relay.dataplane.admission import (
    AdmissionTable,
    address_key,
    build_hello,
    issue_token,
    key_address,
    parse_hello,
    verify_token,
)
from services.classroom_relay.sdp import build_receiver_sdp

SECRET = b"s3cret"
NOW = 1_700_000_000.0


def test_token_round_trip_and_rotation() -> None:
    token = issue_token(SECRET, "s1", "room-1", ttl_seconds=60, now=NOW)
    reason, claims = verify_token([b"new-secret", SECRET], token, now=NOW + 30)
    assert reason == rtp.OK
    assert (claims.session, claims.classroom, claims.expires_at) == ("s1", "room-1", int(NOW + 60))


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda token: token, rtp.TOKEN_EXPIRED),
        (lambda token: token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), rtp.TOKEN_BAD_SIGNATURE),
        (lambda token: "v2" + token[2:], rtp.TOKEN_INVALID),
        (lambda token: token.replace(".", "", 1), rtp.TOKEN_INVALID),
        (lambda token: "v1.e30." + token.split(".")[2], rtp.TOKEN_BAD_SIGNATURE),  # claims swapped
        (lambda token: "v1.é." + token.split(".")[2], rtp.TOKEN_INVALID),
        (lambda token: "x" * 5000, rtp.TOKEN_INVALID),
    ],
)
def test_bad_tokens_are_refused_with_reason(mangle, reason: int) -> None:
    token = issue_token(SECRET, "s1", "room-1", ttl_seconds=60, now=NOW)
    assert verify_token([SECRET], mangle(token), now=NOW + 61)[0] == reason


def test_no_secret_configured_refuses_everything() -> None:
    token = issue_token(SECRET, "s1", "room-1", ttl_seconds=60, now=NOW)
    assert verify_token([], token, now=NOW)[0] == rtp.TOKEN_INVALID


def test_hello_datagram() -> None:
    assert parse_hello(build_hello("v1.a.b"), 0, len(build_hello("v1.a.b"))) == "v1.a.b"
    assert parse_hello(b"LXHELLO1 ", 0, 9) is None
    assert parse_hello(b"HELLO v1.a.b", 0, 12) is None
    assert parse_hello(b"LXHELLO1 \xff\xfe", 0, 11) is None


def test_address_key_matches_raw_sockaddr_layout() -> None:
    key = address_key("127.0.0.1", 40_000)
    assert key_address(key) == ("127.0.0.1", 40_000)
    assert key & 0xFFFFFFFF == 0x7F000001


def test_pinning_addresses_and_ssrcs() -> None:
    table = AdmissionTable()
    table.set_secrets([SECRET])
    members = {("s1", "master")}

    def is_member(session: str, classroom: str) -> bool:
        return (session, classroom) in members

    sender_a, sender_b = address_key("127.0.0.1", 5000), address_key("127.0.0.1", 6000)
    assert table.check_ssrc(sender_a, 1)[0] == rtp.UNKNOWN_SOURCE
    good = issue_token(SECRET, "s1", "master", 60)
    wrong_room = issue_token(SECRET, "s1", "intruder", 60)
    assert table.admit(sender_a, wrong_room, is_member)[0] == rtp.TOKEN_WRONG_BINDING
    assert table.admit(sender_a, good, is_member)[0] == rtp.OK
    for ssrc in (1, 2, 3, 4):
        assert table.check_ssrc(sender_a, ssrc)[0] == rtp.OK
    assert table.check_ssrc(sender_a, 5)[0] == rtp.SSRC_NOT_PINNED  # more layers than one sender may carry
    assert table.admit(sender_b, good, is_member)[0] == rtp.OK
    assert table.check_ssrc(sender_b, 1)[0] == rtp.SSRC_CONFLICT  # SSRC 1 belongs to sender A
    assert table.admit(sender_a, good, is_member)[1].ssrcs == {1, 2, 3, 4}  # repeated hello keeps pins
    table.forget_session("s1")
    assert table.check_ssrc(sender_a, 1)[0] == rtp.UNKNOWN_SOURCE and not table.ssrc_owner


def test_receiver_sdp() -> None:
    text = build_receiver_sdp(
        relay_host="127.0.0.1", receive_port=40_000, relay_rtcp_port=5005, session_name="math\r\nx", ssrc=7
    )
    lines = text.split("\r\n")
    assert lines[0] == "v=0"
    assert "c=IN IP4 127.0.0.1" in lines
    assert "m=video 40000 RTP/AVP 96" in lines
    assert "a=rtpmap:96 H264/90000" in lines
    assert "a=fmtp:96 packetization-mode=1" in lines
    assert "a=rtcp:5005 IN IP4 127.0.0.1" in lines
    assert "s=math x" in lines
    with pytest.raises(ValueError):
        build_receiver_sdp(relay_host="127.0.0.1", receive_port=40_000, payload_type=8)
    with pytest.raises(ValueError):
        build_receiver_sdp(relay_host="not-an-ip", receive_port=40_000)
