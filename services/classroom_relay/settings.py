"""The relay's settings, control plane and data plane (nameko config first, then the environment)."""

from __future__ import annotations

from services.common.link_targets import MBIT, RECEIVING_DOWNLINK_BPS
from services.common.settings import boolean, setting

JOIN_SECRETS = setting(
    "RELAY_JOIN_SECRETS", str, None,
    "comma-separated HMAC secrets for join tokens; the first signs",
    default_text="required (`make run` uses a development secret)")
ALLOW_DEV_SECRET = setting(
    "RELAY_ALLOW_DEV_SECRET", boolean, False,
    "`1`: without `RELAY_JOIN_SECRETS`, sign join tokens with the built-in development secret (tests, a laptop)",
    default_text="`0`")
ADMISSION_HEADROOM = setting("ADMISSION_HEADROOM", float, 0.9, "share of each link that sessions may commit")
BRANCH_TARGET_BPS = setting(
    "RELAY_BRANCH_TARGET_BPS", int, RECEIVING_DOWNLINK_BPS, "what a receiving classroom should get, bit/s")
LOSS_DEGRADED_RATIO = setting(
    "RELAY_LOSS_DEGRADED_RATIO", float, 0.05, "loss above which a stream's health is `degraded`")
DATAPLANES = setting(
    "RELAY_DATAPLANES", str, None,
    "`name=host:port` or `name=unix:/path`, comma-separated: where sessions can be placed",
    default_text="one data plane at `RELAY_CONTROL_ADDRESS`")
CONTROL_ADDRESS = setting(
    "RELAY_CONTROL_ADDRESS", str, "127.0.0.1:7070", "the one data plane's control address without `RELAY_DATAPLANES`")
DATAPLANE_PUBLIC_HOSTS = setting(
    "RELAY_DATAPLANE_PUBLIC_HOSTS", str, None, "`name=IPv4,…`: the media address classrooms are told")
DATAPLANE_CAPACITY_BPS = setting(
    "RELAY_DATAPLANE_CAPACITY_BPS", int, 1000 * MBIT, "what one data plane forwards; placement compares what is left")
CONTROL_SECRET = setting(
    "RELAY_CONTROL_SECRET", str, None,
    "the control channel's shared secret; without it both planes use `RELAY_CONTROL_SECRET_FILE`")
CONTROL_SECRET_FILE = setting(
    "RELAY_CONTROL_SECRET_FILE", str, ".run/relay-control.secret",
    "file holding the control channel's secret: the data plane creates it (mode 0600) if missing, the "
    "control plane reads it")
MEDIA_PORTS = setting(
    "RELAY_MEDIA_PORTS", str, None,
    "`LOW-HIGH`: the UDP ports every data-plane socket binds in (media, RTCP, one per output)",
    default_text="any port")
RECONCILE_INTERVAL = setting(
    "RELAY_RECONCILE_INTERVAL", float, 5.0,
    "seconds between the control plane's pushes of the whole desired state to each data plane, changed or not")
ACCOUNTS_TIMEOUT = setting(
    "RELAY_ACCOUNTS_TIMEOUT", float, 5.0, "seconds the relay waits for accounts' facts about schools and teachers")
STATS_INTERVAL = setting(
    "RELAY_STATS_INTERVAL", float, 2.0, "seconds between the control plane's reads of data-plane statistics")
HEALTH_INTERVAL = setting(
    "RELAY_HEALTH_INTERVAL", float, 2.0, "seconds between the control plane's data-plane health checks")
MEDIA_HOST = setting("RELAY_MEDIA_HOST", str, "127.0.0.1", "the data plane's media address")
MEDIA_PORT = setting("RELAY_MEDIA_PORT", int, 5004, "the data plane's RTP port (RTCP: the next one)")
CONTROL_HOST = setting("RELAY_CONTROL_HOST", str, "127.0.0.1", "the address the data plane's control port listens on")
CONTROL_PORT = setting("RELAY_CONTROL_PORT", int, 7070, "the data plane's control port")
METRICS_PORT = setting(
    "RELAY_METRICS_PORT", int, 9464, "the data plane's `/metrics` port", default_text="`9464` (`make run`: 9106)")
RECORDERS = setting(
    "RELAY_RECORDERS", str, None,
    "`dataplane=host:port`, comma-separated: the recorder beside each data plane (docs/recording.md); it is "
    "attached to every live session there (patrol) and keeps the ones whose `record` is on",
    default_text="none (nothing recorded)")
