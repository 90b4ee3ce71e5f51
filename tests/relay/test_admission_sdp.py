"""Join tokens and sender pinning (one address per track). The SDP is the control plane's: tests/relay_control."""

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
    assert parse_hello(build_hello("v1.a.b"), 0, len(build_hello("v1.a.b"))) == ("v1.a.b", "camera")
    with_track = build_hello("v1.a.b", "audio")
    assert with_track == b"LXHELLO1 v1.a.b audio"
    assert parse_hello(with_track, 0, len(with_track)) == ("v1.a.b", "audio")
    assert parse_hello(b"LXHELLO1 v1.a.b AUDIO!", 0, 22) == ("v1.a.b", "")  # a bad track name is refused later
    assert parse_hello(b"LXHELLO1 a b c", 0, 14) is None
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
    tracks = {("s1", "master", "camera"), ("s1", "master", "audio")}
    silence = {"seconds": 0.0}

    def publishes(session: str, classroom: str, track: str) -> bool:
        return (session, classroom, track) in tracks

    def silent_for(_key: int) -> float:
        return silence["seconds"]

    sender_a, sender_b = address_key("127.0.0.1", 5000), address_key("127.0.0.1", 6000)
    audio_port = address_key("127.0.0.1", 5002)
    assert table.check_ssrc(sender_a, 1)[0] == rtp.UNKNOWN_SOURCE
    good = issue_token(SECRET, "s1", "master", 60)
    wrong_room = issue_token(SECRET, "s1", "intruder", 60)
    assert table.admit(sender_a, wrong_room, "camera", publishes, silent_for)[0] == rtp.TOKEN_WRONG_BINDING
    assert table.admit(sender_a, good, "slides", publishes, silent_for)[0] == rtp.TOKEN_WRONG_BINDING
    assert table.admit(sender_a, good, "camera", publishes, silent_for)[0] == rtp.OK
    assert table.admit(audio_port, good, "audio", publishes, silent_for)[0] == rtp.OK  # one port per track
    for ssrc in (1, 2, 3, 4):
        assert table.check_ssrc(sender_a, ssrc)[0] == rtp.OK
    assert table.check_ssrc(sender_a, 5)[0] == rtp.SSRC_NOT_PINNED  # more layers than one sender may carry
    # A replayed token from a second address is refused while the first sender is live...
    assert table.admit(sender_b, good, "camera", publishes, silent_for)[0] == rtp.SENDER_TAKEN
    # ...taken over after the first fell silent for the hand-over time, or explicitly by the control plane.
    silence["seconds"] = 3.5
    assert table.admit(sender_b, good, "camera", publishes, silent_for)[0] == rtp.OK
    assert table.handovers == 1 and sender_a not in table.senders
    assert table.admit(sender_a, good, "camera", publishes, lambda _key: 0.0, explicit=True)[0] == rtp.OK
    assert table.check_ssrc(sender_a, 1)[0] == rtp.OK
    assert table.admit(sender_b, good, "camera", publishes, lambda _key: 0.0)[0] == rtp.SENDER_TAKEN
    assert table.admit(sender_a, good, "camera", publishes, silent_for)[1].ssrcs == {1}  # repeated hello keeps pins
    table.forget_session("s1")
    assert table.check_ssrc(sender_a, 1)[0] == rtp.UNKNOWN_SOURCE and not table.ssrc_owner
    assert not table.track_sender
