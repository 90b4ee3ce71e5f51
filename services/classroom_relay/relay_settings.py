"""The relay control plane's settings: join-token secrets, link headroom, stream-health thresholds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from services.classroom_relay import link_budgets
from services.classroom_relay.exceptions import (
    InvalidInput,
)
from services.classroom_relay.models import (
    MBIT,
)

DEV_JOIN_SECRET = "dev-only-join-secret"  # only with RELAY_ALLOW_DEV_SECRET=1 (tests, `make run`)


@dataclass(frozen=True)
class RelaySettings:
    """Tunables from the environment (or nameko config): see `settings_from`."""

    join_secrets: list[str] = field(default_factory=lambda: [DEV_JOIN_SECRET])
    headroom: float = link_budgets.DEFAULT_HEADROOM
    branch_target_bps: int = 10 * MBIT
    loss_degraded_ratio: float = 0.05
    # A branch is "below target" when it gets less than this share of what it could get.
    rate_degraded_share: float = 0.5


def settings_from(config: dict[str, Any] | None = None) -> RelaySettings:
    """RELAY_JOIN_SECRETS (comma-separated, first signs), ADMISSION_HEADROOM, RELAY_BRANCH_TARGET_BPS,
    RELAY_LOSS_DEGRADED_RATIO — nameko config first, then the environment.

    Without RELAY_JOIN_SECRETS this raises ValueError (the service does not start): a well-known
    default secret would let anyone mint join tokens. RELAY_ALLOW_DEV_SECRET=1 allows the built-in
    development secret, for tests and a single development machine.
    """
    config = config or {}

    def value(name: str) -> Any:
        found = config.get(name)
        return found if found not in (None, "") else os.environ.get(name) or None

    secrets_text = value("RELAY_JOIN_SECRETS")
    defaults = RelaySettings()
    secrets = [part.strip() for part in str(secrets_text).split(",") if part.strip()] if secrets_text else None
    if not secrets and str(value("RELAY_ALLOW_DEV_SECRET") or "").lower() not in ("1", "true", "yes"):
        raise ValueError(
            "RELAY_JOIN_SECRETS is not set: give the relay's join-token secret(s) (comma-separated, the first "
            "signs), or set RELAY_ALLOW_DEV_SECRET=1 on a development machine."
        )
    headroom = float(value("ADMISSION_HEADROOM") or defaults.headroom)
    if not 0 < headroom <= 1:
        raise InvalidInput(f"ADMISSION_HEADROOM must be in (0, 1], not {headroom}.")
    return RelaySettings(
        join_secrets=secrets or defaults.join_secrets,
        headroom=headroom,
        branch_target_bps=int(value("RELAY_BRANCH_TARGET_BPS") or defaults.branch_target_bps),
        loss_degraded_ratio=float(value("RELAY_LOSS_DEGRADED_RATIO") or defaults.loss_degraded_ratio),
    )
