"""RTMP stream keys, derived from a classroom's join token.

A key is ``<session>.<classroom>.<exp>.<mac>``: the join token's own session, classroom and expiry, and a
base64url HMAC-SHA256 keyed with the token itself over those three. Whoever holds the join token (the
classroom's school, the control plane) can compute it; nobody else can, and it dies with the token. The
ingest process verifies it against the token its desired state holds for that (session, classroom), so a
key of another session, an ended session or a renewed token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

KEY_PATTERN = re.compile(r"([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{1,64})\.(\d{1,12})\.([A-Za-z0-9_-]{22})")
MAC_CHARS = 22  # 132 bits of the HMAC, base64url


@dataclass(frozen=True)
class TokenBinding:
    session: str
    classroom: str
    expires_at: int


def token_binding(token: str) -> TokenBinding:
    """The claims of a join token (`dataplane/admission.py` format), read without verifying the signature:
    the control plane that gave us the token verified it; the data plane verifies it again on every hello."""
    try:
        version, payload, _signature = token.split(".")
        if version != "v1":
            raise ValueError(version)
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return TokenBinding(str(claims["session"]), str(claims["classroom"]), int(claims["exp"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError("not a join token (v1.<claims>.<signature>)") from error


def _mac(token: str, session: str, classroom: str, expires_at: int) -> str:
    digest = hmac.new(token.encode(), f"rtmp|{session}|{classroom}|{expires_at}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:MAC_CHARS]


def stream_key(token: str) -> str:
    binding = token_binding(token)
    mac = _mac(token, binding.session, binding.classroom, binding.expires_at)
    return f"{binding.session}.{binding.classroom}.{binding.expires_at}.{mac}"


def parse_key(key: str) -> tuple[str, str] | None:
    """(session, classroom) a key claims to be for, or None when it is not shaped like a key at all."""
    match = KEY_PATTERN.fullmatch(key)
    return (match.group(1), match.group(2)) if match else None


def check_key(key: str, token: str, now: float | None = None) -> str | None:
    """None when `key` is the stream key of `token` and unexpired, else the refusal reason:
    `malformed`, `wrong_key` or `expired`."""
    match = KEY_PATTERN.fullmatch(key)
    if match is None:
        return "malformed"
    session, classroom, expires_at, mac = match.group(1), match.group(2), int(match.group(3)), match.group(4)
    binding = token_binding(token)
    if (session, classroom, expires_at) != (binding.session, binding.classroom, binding.expires_at):
        return "wrong_key"
    if not hmac.compare_digest(mac, _mac(token, session, classroom, expires_at)):
        return "wrong_key"
    if expires_at < (time.time() if now is None else now):
        return "expired"
    return None
