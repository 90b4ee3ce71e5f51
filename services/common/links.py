"""The bureau's link targets, one definition for accounts (a school's default link), the relay's
admission control and its data plane's metrics.

A master school's link carries 100 Mbit/s; a broadcasting classroom needs at least 25 Mbit/s up and
each receiving classroom at least 10 Mbit/s down.
"""

from __future__ import annotations

MBIT = 1_000_000
MASTER_SCHOOL_LINK_BPS = 100 * MBIT
BROADCASTING_UPLINK_BPS = 25 * MBIT
RECEIVING_DOWNLINK_BPS = 10 * MBIT
