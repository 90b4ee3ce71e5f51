"""Who may send media: join tokens, and senders pinned to an address and their SSRCs.

A join token is ``v1.<claims>.<signature>``: base64url JSON claims ``{"session", "classroom", "exp"}``
and base64url HMAC-SHA256 over ``v1.<claims>`` with a secret shared with the control plane. The
control plane issues tokens (``issue_token``); the data plane verifies them (``verify_token``).

Real encoders cannot put a custom first datagram into their RTP stream, so there are two ways in:

- a *hello* datagram ``LXHELLO1 <token> <track>`` sent from the encoder's RTP source port just before it
  starts (e.g. ``ffmpeg ... rtp://relay:port?localport=N`` after a hello from port N); ``LXHELLO1 <token>``
  names the camera track, or
- the control plane registers the encoder's source address together with a valid token and the track.

Either way the address is pinned to (session, classroom, track) and the first SSRCs it sends are pinned
to it; everything else is dropped and counted. A track has one sender address at a time: a hello for it
from a second address is refused (``sender_taken``) until the first has been silent for
``HANDOVER_SILENCE_SECONDS`` (an encoder restarted on a new port); a registration by the control plane
is an explicit hand-over and replaces the first at once. An SSRC pinned to one sender is never taken by
another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import rtp

TOKEN_VERSION = "v1"
HELLO_PREFIX = b"LXHELLO1 "
MAX_HELLO_BYTES = 1024
MAX_SSRCS_PER_SENDER = 4  # simulcast layers one source port may carry
DEFAULT_TRACK = "camera"  # what a hello without a track name, or a protocol-1 registration, sends
HANDOVER_SILENCE_SECONDS = 3.0
TRACK_NAME = re.compile(r"[a-z0-9_-]{1,32}")
# What a hello or a registration names: a track, optionally with the simulcast layer this address carries
# ("camera:1"), because ffmpeg sends every layer from its own port. Each (track, layer) admits one address.
SENDER_SLOT = re.compile(r"([a-z0-9_-]{1,32})(?::([0-3]))?")

_ADDRESS_KEY = struct.Struct("!Q")
_FAMILY_PREFIX = struct.pack("=H", socket.AF_INET)  # sockaddr_in begins with the family, host order


def address_key(host: str, port: int) -> int:
    """The same integer the loop reads from a raw ``sockaddr_in`` (family, port, IPv4 address)."""
    raw = _FAMILY_PREFIX + struct.pack("!H", port) + socket.inet_aton(host)
    return _ADDRESS_KEY.unpack(raw)[0]


def key_address(key: int) -> tuple[str, int]:
    raw = _ADDRESS_KEY.pack(key)
    return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]


def rtp_companion_key(rtcp_key: int) -> int:
    """Key of the port just below an RTCP source (RTP on N, RTCP on N+1: the classic pairing ffmpeg uses)."""
    return rtcp_key - (1 << 32)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


def issue_token(secret: bytes, session: str, classroom: str, ttl_seconds: float, now: float | None = None) -> str:
    issued_at = time.time() if now is None else now
    claims = {"session": session, "classroom": classroom, "exp": int(issued_at + ttl_seconds)}
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signed_part = f"{TOKEN_VERSION}.{payload}"
    return f"{signed_part}.{_b64encode(_signature(secret, signed_part))}"


@dataclass(frozen=True, slots=True)
class TokenClaims:
    session: str
    classroom: str
    expires_at: int


def verify_token(secrets: list[bytes], token: str, now: float | None = None) -> tuple[int, TokenClaims | None]:
    """(rtp.OK, claims) or (drop reason, None). Accepts any of ``secrets`` (rotation)."""
    if not secrets or len(token) > MAX_HELLO_BYTES:
        return rtp.TOKEN_INVALID, None
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_VERSION:
        return rtp.TOKEN_INVALID, None
    signed_part = f"{parts[0]}.{parts[1]}"
    try:
        presented = _b64decode(parts[2])
        signed_bytes_ok = signed_part.isascii()
    except (ValueError, UnicodeError):
        return rtp.TOKEN_INVALID, None
    if not signed_bytes_ok:
        return rtp.TOKEN_INVALID, None
    # compare_digest against every accepted secret: constant time in the signature's content.
    if not any(hmac.compare_digest(_signature(secret, signed_part), presented) for secret in secrets):
        return rtp.TOKEN_BAD_SIGNATURE, None
    try:
        claims = json.loads(_b64decode(parts[1]))
        session, classroom, expires_at = str(claims["session"]), str(claims["classroom"]), int(claims["exp"])
    except (ValueError, KeyError, TypeError, UnicodeError):
        return rtp.TOKEN_INVALID, None
    if expires_at < (time.time() if now is None else now):
        return rtp.TOKEN_EXPIRED, None
    return rtp.OK, TokenClaims(session, classroom, expires_at)


def parse_hello(buffer: bytes | bytearray | memoryview, offset: int, length: int) -> tuple[str, str] | None:
    """(token, track) inside a hello datagram, or None if this is not one. A missing or malformed track
    name is ``DEFAULT_TRACK`` / an empty string (refused by admission)."""
    if length <= len(HELLO_PREFIX) or length > MAX_HELLO_BYTES:
        return None
    data = bytes(buffer[offset : offset + length])
    if not data.startswith(HELLO_PREFIX):
        return None
    try:
        words = data[len(HELLO_PREFIX) :].decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if not words or len(words) > 2:
        return None
    track = words[1] if len(words) == 2 else DEFAULT_TRACK
    return words[0], track if SENDER_SLOT.fullmatch(track) else ""


def build_hello(token: str, track: str | None = None) -> bytes:
    return HELLO_PREFIX + token.encode("ascii") + (b" " + track.encode("ascii") if track else b"")


@dataclass(slots=True)
class PinnedSender:
    session: str
    classroom: str
    track: str
    how: str  # "hello" or "registered"
    layer: int = 0  # which simulcast layer slot of the track this address holds
    pinned_at: float = 0.0  # monotonic
    ssrcs: set[int] = field(default_factory=set)
    # Sender reports that came before their SSRC's first packet: (NTP middle 32, RTP timestamp, arrival)
    early_reports: dict[int, tuple[int, int, float]] = field(default_factory=dict)
    rtcp_key: int = 0  # where its RTCP came from (RTP port + 1 for ffmpeg); 0 until seen


class AdmissionTable:
    """Pinned senders by address key, and which sender owns each SSRC."""

    def __init__(self) -> None:
        self.secrets: list[bytes] = []
        self.senders: dict[int, PinnedSender] = {}
        self.ssrc_owner: dict[int, int] = {}
        # (session, classroom, track, layer slot) -> address key of its one sender
        self.track_sender: dict[tuple[str, str, str, int], int] = {}
        self.handovers = 0

    def set_secrets(self, secrets: list[bytes]) -> None:
        self.secrets = list(secrets)

    def admit(
        self,
        key: int,
        token: str,
        track: str,
        publishes: Callable[[str, str, str], bool],
        silent_for: Callable[[int], float],
        explicit: bool = False,
        now: float | None = None,
    ) -> tuple[int, PinnedSender | None]:
        """Verify ``token`` and pin ``key`` to its (session, classroom) and ``track``.

        ``publishes(session, classroom, track)`` checks the binding; ``silent_for(key)`` is how long the
        current sender of the track has sent nothing; ``explicit``: the control plane registers this address,
        which hands the track over at once.
        """
        reason, claims = verify_token(self.secrets, token, now)
        if claims is None:
            return reason, None
        slot = SENDER_SLOT.fullmatch(track)
        if slot is None or not publishes(claims.session, claims.classroom, slot.group(1)):
            return rtp.TOKEN_WRONG_BINDING, None
        track, layer = slot.group(1), int(slot.group(2) or 0)
        binding = (claims.session, claims.classroom, track, layer)
        existing = self.senders.get(key)
        if existing is not None and (existing.session, existing.classroom, existing.track, existing.layer) == binding:
            return rtp.OK, existing  # idempotent: a repeated hello or registration keeps pinned SSRCs
        owner = self.track_sender.get(binding)
        if owner is not None and owner != key:
            if not explicit and silent_for(owner) < HANDOVER_SILENCE_SECONDS:
                return rtp.SENDER_TAKEN, None
            self.forget(owner)
            self.handovers += 1
        self.forget(key)
        sender = PinnedSender(claims.session, claims.classroom, track, "hello", layer, time.monotonic())
        self.senders[key] = sender
        self.track_sender[binding] = key
        return rtp.OK, sender

    def check_ssrc(self, key: int, ssrc: int) -> tuple[int, PinnedSender | None]:
        """Whether media with ``ssrc`` from ``key`` is admitted; pins the SSRC on first sight."""
        sender = self.senders.get(key)
        if sender is None:
            return rtp.UNKNOWN_SOURCE, None
        if ssrc in sender.ssrcs:
            return rtp.OK, sender
        owner = self.ssrc_owner.get(ssrc)
        if owner is not None and owner != key:
            return rtp.SSRC_CONFLICT, None
        if len(sender.ssrcs) >= MAX_SSRCS_PER_SENDER:
            return rtp.SSRC_NOT_PINNED, None
        sender.ssrcs.add(ssrc)
        self.ssrc_owner[ssrc] = key
        return rtp.OK, sender

    def forget(self, key: int) -> PinnedSender | None:
        sender = self.senders.pop(key, None)
        if sender is not None:
            binding = (sender.session, sender.classroom, sender.track, sender.layer)
            if self.track_sender.get(binding) == key:
                del self.track_sender[binding]
            for ssrc in sender.ssrcs:
                if self.ssrc_owner.get(ssrc) == key:
                    del self.ssrc_owner[ssrc]
        return sender

    def forget_session(self, session: str, classroom: str | None = None, track: str | None = None) -> list[int]:
        keys = [
            key
            for key, sender in self.senders.items()
            if sender.session == session
            and (classroom is None or sender.classroom == classroom)
            and (track is None or sender.track == track)
        ]
        for key in keys:
            self.forget(key)
        return keys
