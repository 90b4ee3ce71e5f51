"""Typed errors that keep their type across the RPC boundary.

nameko turns an exception raised in a worker into a `RemoteError` at the caller unless its class is
registered with `deserialize_to_instance`; every subclass of `LianxiaoError` registers itself, so the
gateway can map `NotFound` to 404 without parsing strings.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from nameko.exceptions import deserialize_to_instance


class LianxiaoError(Exception):
    """Base of every domain error: a human `detail`, optional per-field messages."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, fields: dict[str, Any] | str | None = None) -> None:
        # nameko stringifies every non-string argument on the way; JSON keeps numbers numbers.
        parsed: dict[str, Any] = (json.loads(fields) if isinstance(fields, str) else fields) or {}
        super().__init__(detail, json.dumps(parsed, ensure_ascii=False, default=str))
        self.detail = detail
        self.fields = parsed

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        deserialize_to_instance(cls)

    def __str__(self) -> str:
        return self.detail

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "detail": self.detail, "fields": self.fields}


deserialize_to_instance(LianxiaoError)


class InvalidInput(LianxiaoError):
    status = 422
    title = "Invalid input"


class NotFound(LianxiaoError):
    status = 404
    title = "Not found"


class Conflict(LianxiaoError):
    status = 409
    title = "Conflict"


class Forbidden(LianxiaoError):
    status = 403
    title = "Forbidden"


class Unauthenticated(LianxiaoError):
    status = 401
    title = "Unauthenticated"


class ServiceUnavailable(LianxiaoError):
    status = 503
    title = "Service unavailable"
