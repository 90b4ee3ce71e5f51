"""API tokens (Bearer, or HTTP Basic with the token as the secret): verified by the accounts service,
remembered briefly by each gateway worker.

A verified scope (and a rejection) is cached for `ttl` seconds (30 by default, never past the token's
own expiry), keyed by the SHA-256 of the token so the secret itself is never kept or logged. The cache
is bounded (least recently used entries go first) and per worker process.

Revocation: the worker that handles `DELETE /v1/tokens/{id}` forgets that token at once; the other
workers keep accepting it until their cache entry ages out, i.e. **a revoked token may keep working
for up to `ttl` seconds**. Lower GATEWAY_AUTH_CACHE_SECONDS to shorten that window (0 disables the
cache, at one accounts RPC per request).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.common.errors import Unauthenticated
from services.common.timeutil import as_utc

BEARER_PREFIX = "bearer "
MAX_TOKEN_CHARS = 512


class AuthenticationRequired(Unauthenticated):
    """No usable credentials at all (as opposed to a token that accounts rejected)."""


@dataclass
class _Entry:
    fresh_until: float
    scope: dict[str, Any] | None
    rejection: str | None  # accounts' reason, when the token was refused


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or `AuthenticationRequired`."""
    if not authorization:
        raise AuthenticationRequired("Send an API token: 'Authorization: Bearer <token>'.")
    if not authorization[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
        raise AuthenticationRequired("The Authorization header must use the Bearer scheme: 'Bearer <token>'.")
    token = authorization[len(BEARER_PREFIX):].strip()
    if not token or " " in token or len(token) > MAX_TOKEN_CHARS:
        raise AuthenticationRequired("The Authorization header is malformed: expected 'Bearer <token>'.")
    return token


BASIC_PREFIX = "basic "


def basic_token(authorization: str) -> str:
    """The token sent as HTTP Basic credentials, for LRS tools that only speak Basic (key/secret).

    The token is the password (the user name is free: e.g. the token's prefix), or the user name
    with an empty password.
    """
    try:
        decoded = base64.b64decode(authorization[len(BASIC_PREFIX):].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise AuthenticationRequired("The Basic credentials are not base64 of 'key:secret'.") from error
    user, separator, password = decoded.partition(":")
    token = password or user
    if not separator or not token or " " in token or len(token) > MAX_TOKEN_CHARS:
        raise AuthenticationRequired("Send the API token as the Basic password ('key:<token>').")
    return token


def request_token(authorization: str | None) -> str:
    """The API token of a request: `Bearer <token>`, or HTTP Basic with the token as the secret."""
    if authorization and authorization[: len(BASIC_PREFIX)].lower() == BASIC_PREFIX:
        return basic_token(authorization)
    return bearer_token(authorization)


def _seconds_until(iso_moment: Any, now: datetime) -> float | None:
    if not isinstance(iso_moment, str):
        return None
    try:
        moment = datetime.fromisoformat(iso_moment)
    except ValueError:
        return None
    return (as_utc(moment) - now).total_seconds()


class TokenVerifier:
    """`scope_for(header)` → the token's scope dict; raises `Unauthenticated` (401) otherwise."""

    def __init__(
        self,
        verify: Callable[[str], dict[str, Any]],
        ttl: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        on_lookup: Callable[[str], None] | None = None,
    ) -> None:
        self.verify = verify
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self.on_lookup = on_lookup
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._digests_by_token_id: dict[int, str] = {}
        self._lock = threading.Lock()

    def scope_for(
        self, authorization: str | None, before_verifying: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """`before_verifying` runs only when accounts must be asked (it may refuse, e.g. a rate limit)."""
        token = request_token(authorization)
        digest = token_digest(token)
        entry = self._cached(digest)
        if entry is None:
            if before_verifying is not None:
                before_verifying()
            self._count("miss")
            entry = self._verify(token)  # outside the lock: an RPC must never serialise the threads
            self._remember(digest, entry)
        else:
            self._count("hit")
        if entry.rejection is not None:
            raise Unauthenticated(entry.rejection)
        assert entry.scope is not None
        return entry.scope

    def forget_token_id(self, token_id: int) -> None:
        """Drop a revoked token from this worker's cache at once."""
        with self._lock:
            digest = self._digests_by_token_id.pop(token_id, None)
            if digest is not None:
                self._entries.pop(digest, None)

    def _count(self, result: str) -> None:
        if self.on_lookup is not None:
            self.on_lookup(result)

    def _verify(self, token: str) -> _Entry:
        now = self.clock()
        try:
            scope = self.verify(token)
        except Unauthenticated as rejection:
            # Cached too: a flood of bad tokens must not become a flood of RPCs. Safe, because a
            # token that was invalid never becomes valid (secrets are random and never reissued).
            return _Entry(now + self.ttl, None, rejection.detail)
        lifetime = self.ttl
        for limit in ("expires_at", "signed_until"):  # never keep a scope past the token or its signature
            remaining = _seconds_until(scope.get(limit), datetime.now(UTC))
            if remaining is not None:
                lifetime = max(0.0, min(lifetime, remaining))
        return _Entry(now + lifetime, scope, None)

    def _cached(self, digest: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry.fresh_until <= self.clock():
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return entry

    def _remember(self, digest: str, entry: _Entry) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            if entry.scope is not None and entry.scope.get("token_id") is not None:
                self._digests_by_token_id[int(entry.scope["token_id"])] = digest
            while len(self._entries) > self.max_entries:
                _old_digest, old = self._entries.popitem(last=False)
                if old.scope is not None and old.scope.get("token_id") is not None:
                    self._digests_by_token_id.pop(int(old.scope["token_id"]), None)
