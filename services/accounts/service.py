"""The accounts service: RPC entrypoints only; the logic lives in directory, roster and tokens."""

from __future__ import annotations

from typing import Any

from services.accounts import directory, roster, tokens
from services.accounts.models import outbox
from services.accounts.roster_isolation import ImportSlots, read_table_isolated, yield_to_other_requests
from services.common.db import Database
from services.common.entrypoints import rpc
from services.common.events import OutboxRelay
from services.common.health import HealthRpc
from services.common.metrics import ServiceMetrics
from services.common.replay import ReplayRpc
from services.common.scope import Scope


class AccountsService(HealthRpc, ReplayRpc):
    name = "accounts"

    db = Database("accounts")
    metrics = ServiceMetrics("accounts")
    events = OutboxRelay(outbox)
    roster_slots = ImportSlots()

    # --- organisation ---------------------------------------------------------------------------
    @rpc
    def get_bureau(self, scope: dict, bureau_id: int) -> dict[str, Any]:
        return directory.get_bureau(self.db, Scope.from_dict(scope), bureau_id)

    @rpc
    def create_district(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return directory.create_district(self.db, Scope.from_dict(scope), data)

    @rpc
    def list_districts(self, scope: dict) -> list[dict[str, Any]]:
        return directory.list_districts(self.db, Scope.from_dict(scope))

    @rpc
    def create_school(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return directory.create_school(self.db, Scope.from_dict(scope), data)

    @rpc
    def get_school(self, scope: dict, school_id: int) -> dict[str, Any]:
        return directory.get_school(self.db, Scope.from_dict(scope), school_id)

    @rpc
    def list_schools(self, scope: dict) -> list[dict[str, Any]]:
        return directory.list_schools(self.db, Scope.from_dict(scope))

    @rpc
    def school_facts(self, scope: dict, school_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Bureau, district and link of the listed schools in the scope (others absent; keys arrive as text)."""
        return directory.school_facts(self.db, Scope.from_dict(scope), school_ids)

    @rpc
    def create_alliance(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return directory.create_alliance(self.db, Scope.from_dict(scope), data)

    @rpc
    def add_alliance_member(self, scope: dict, alliance_id: int, school_id: int) -> dict[str, Any]:
        with self.db.begin():
            return directory.add_alliance_member(self.db, Scope.from_dict(scope), alliance_id, school_id)

    @rpc
    def list_alliances(self, scope: dict) -> list[dict[str, Any]]:
        return directory.list_alliances(self.db, Scope.from_dict(scope))

    # --- people and groups ----------------------------------------------------------------------
    @rpc
    def create_teacher(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return directory.create_teacher(self.db, Scope.from_dict(scope), data)

    @rpc
    def get_teacher(self, scope: dict, teacher_id: int) -> dict[str, Any]:
        return directory.get_teacher(self.db, Scope.from_dict(scope), teacher_id)

    @rpc
    def update_teacher(self, scope: dict, teacher_id: int, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return directory.update_teacher(self.db, Scope.from_dict(scope), teacher_id, data)

    @rpc
    def list_teachers(
        self, scope: dict, school_id: int, limit: int = 100, after_id: int = 0, include_inactive: bool = False
    ) -> dict[str, Any]:
        return directory.list_teachers(
            self.db, Scope.from_dict(scope), school_id,
            limit=limit, after_id=after_id, include_inactive=include_inactive,
        )

    @rpc
    def teacher_names(self, scope: dict, teacher_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Names for a report's lines (at most 2 000 ids); over JSON the keys arrive as strings."""
        return directory.teacher_names(self.db, Scope.from_dict(scope), teacher_ids)

    @rpc
    def create_group(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return directory.create_group(self.db, Scope.from_dict(scope), data)

    @rpc
    def list_groups(self, scope: dict, school_id: int | None = None) -> list[dict[str, Any]]:
        return directory.list_groups(self.db, Scope.from_dict(scope), school_id)

    @rpc
    def import_roster(self, scope: dict, school_id: int, filename: str, content_base64: str) -> dict[str, Any]:
        content = roster.decode_upload(content_base64)
        with self.roster_slots, self.db.begin():
            return roster.import_roster(
                self.db, Scope.from_dict(scope), school_id, filename, content,
                progress=yield_to_other_requests, reader=read_table_isolated,
            )

    # --- tokens ---------------------------------------------------------------------------------
    @rpc
    def verify_token(self, token: str) -> dict[str, Any]:
        return tokens.verify_token(self.db, token)

    @rpc
    def issue_token(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return tokens.issue_token(self.db, Scope.from_dict(scope), data)

    @rpc
    def revoke_token(self, scope: dict, token_id: int) -> dict[str, Any]:
        with self.db.begin():
            return tokens.revoke_token(self.db, Scope.from_dict(scope), token_id)

    @rpc
    def list_tokens(self, scope: dict) -> list[dict[str, Any]]:
        return tokens.list_tokens(self.db, Scope.from_dict(scope))
