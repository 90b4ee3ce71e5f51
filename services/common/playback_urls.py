"""Signed playback URLs for recordings, as nginx's `secure_link` module checks them (docs/recording.md).

A URL names one recording key and expires; a clip's URL also fixes its start and end, so neither the
recording nor the clip can be changed without the secret. nginx serves the bytes (HTTP Range, HLS, the
`mp4` module's clips); Python only signs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import quote

KEY_PATTERN = re.compile(r"^[a-z0-9-]{1,64}\Z")  # \Z: "$" would let a trailing newline through
FILE_PATTERN = re.compile(r"^[A-Za-z0-9._/-]{1,200}\Z")
MEDIA_PREFIX = "/media"


def _bound(value: float | None) -> str:
    """How a clip bound is written in the URL and in the signed text (the same string in both)."""
    if value is None:
        return ""
    return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else str(int(value))


def signature(key: str, expires: int, secret: str, start: float | None = None, end: float | None = None) -> str:
    """base64url (no padding) of MD5("<expires>/<key><start><end> <secret>"): nginx's `secure_link_md5`."""
    if not KEY_PATTERN.match(key):
        raise ValueError(f"recording key {key!r} must match {KEY_PATTERN.pattern}")
    text = f"{int(expires)}/{key}{_bound(start)}{_bound(end)} {secret}"
    digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signed_path(
    key: str, file: str, expires: int, secret: str, start: float | None = None, end: float | None = None
) -> str:
    """`/media/<signature>/<expires>/<key>/<file>[?start=&end=]` — append it to the public media base URL."""
    if not FILE_PATTERN.match(file) or ".." in file.split("/"):
        raise ValueError(f"file {file!r} is not a plain relative path")
    if (start is None) != (end is None) or (start is not None and end is not None and not 0 <= start < end):
        raise ValueError("a clip needs 0 <= start < end, both or neither")
    path = f"{MEDIA_PREFIX}/{signature(key, expires, secret, start, end)}/{int(expires)}/{key}/{quote(file)}"
    if start is not None:
        path += f"?start={_bound(start)}&end={_bound(end)}"
    return path


def valid(key: str, expires: int, sig: str, secret: str, now: float,
          start: float | None = None, end: float | None = None) -> bool:
    """What nginx decides, for tests and for any Python that must check a URL itself."""
    if expires < now or not KEY_PATTERN.match(key):
        return False
    return hmac.compare_digest(sig, signature(key, expires, secret, start, end))
