"""The bureau's bandwidth targets for live lessons, in bits per second: the one definition.

The master school's internet link carries 100 Mbit/s, a broadcasting classroom sends over at least
25 Mbit/s, each receiving classroom has at least 10 Mbit/s. Link budgets (classroom_relay/link_budgets.py)
use them as defaults; the control plane and the data plane export them as
``lianxiao_relay_link_target_bytes_per_second{link=...}`` with the labels below, which the alert rules
(deploy/prometheus/rules/relay.yml) compare against. Standard library only: the data plane imports it.
"""

from __future__ import annotations

MBIT = 1_000_000
MASTER_SCHOOL_LINK_BPS = 100 * MBIT
BROADCASTING_UPLINK_BPS = 25 * MBIT
RECEIVING_DOWNLINK_BPS = 10 * MBIT

# Metric label → target.
LINK_TARGETS_BPS: dict[str, int] = {
    "master_school": MASTER_SCHOOL_LINK_BPS,
    "broadcasting_uplink": BROADCASTING_UPLINK_BPS,
    "receiving_downlink": RECEIVING_DOWNLINK_BPS,
}
LINK_TARGETS_BYTES_PER_SECOND: dict[str, float] = {link: bps / 8 for link, bps in LINK_TARGETS_BPS.items()}
