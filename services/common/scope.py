"""Who is asking: the scope a verified API token grants, checked by every service that owns data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from services.common.errors import Forbidden, InvalidInput


@dataclass(frozen=True)
class Scope:
    """A bureau, district or school token; `read` tokens may only look, `write` tokens may change."""

    bureau_id: int
    kind: str
    id: int
    access: str = "read"
    token_id: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Scope:
        if not isinstance(data, dict):
            raise InvalidInput("A scope is required (who is asking).")
        try:
            return cls(
                bureau_id=int(data["bureau_id"]),
                kind=str(data["kind"]),
                id=int(data["id"]),
                access=str(data.get("access", "read")),
                token_id=data.get("token_id"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(f"Malformed scope: {error}") from error

    @classmethod
    def bureau_admin(cls, bureau_id: int) -> Scope:
        """The operator's own scope (command-line tool)."""
        return cls(bureau_id=bureau_id, kind="bureau", id=bureau_id, access="write")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def covers_school(self, bureau_id: int, district_id: int | None, school_id: int) -> bool:
        if bureau_id != self.bureau_id:
            return False
        if self.kind == "bureau":
            return True
        if self.kind == "district":
            return district_id == self.id
        return self.kind == "school" and school_id == self.id

    def covers_bureau(self, bureau_id: int) -> bool:
        return self.kind == "bureau" and self.bureau_id == bureau_id

    def require_write(self) -> None:
        if self.access != "write":
            raise Forbidden("This token may only read; a write token is needed to change data.")

    def describe(self) -> str:
        return f"{self.kind} {self.id}"
