"""Settings of the recorder process (services/classroom_relay/recorder, docs/recording.md): its ports, where
the data plane sends it media, how it cuts segments and when it stops for a full disk. Where it writes is
RECORDINGS_ROOT (services/common/config.py)."""

from __future__ import annotations

from services.common.settings import setting


def port_range(text: str) -> tuple[int, int]:
    """`lo-hi`, both even-aligned bounds inside 1024..65535."""
    low, _, high = text.partition("-")
    first, last = int(low), int(high or low)
    if not 1024 <= first < last <= 65535:
        raise ValueError("expected lo-hi with 1024 <= lo < hi <= 65535")
    return first, last


CONTROL_PORT = setting("RECORDER_CONTROL_PORT", int, 7090, "the recorder's control port (the relay's control plane)")
METRICS_PORT = setting(
    "RECORDER_METRICS_PORT", int, 9467, "the recorder's `/metrics` port", default_text="`9467` (`make run`: 9108)")
MEDIA_HOST = setting(
    "RECORDER_MEDIA_HOST", str, "127.0.0.1", "the address the data plane sends the recorded tracks to")
MEDIA_PORTS = setting(
    "RECORDER_MEDIA_PORTS", port_range, (42000, 42999),
    "`lo-hi`: UDP ports the recorder receives RTP on (blocks of 8 per recorded session)",
    default_text="`42000-42999`")
SEGMENT_SECONDS = setting("RECORDER_SEGMENT_SECONDS", int, 2, "HLS segment length (keyframes permitting)")
STALL_SECONDS = setting(
    "RECORDER_STALL_SECONDS", int, 6,
    "no media for this long ends the running part (a gap); the recorder starts a new one when media returns")
MIN_FREE_BYTES = setting(
    "RECORDER_MIN_FREE_BYTES", int, 2 * 1024**3,
    "below this much free disk the recorder refuses new recordings (`disk_full`) and ends running ones cleanly")
LOW_FREE_BYTES = setting(
    "RECORDER_LOW_FREE_BYTES", int, 20 * 1024**3,
    "below this much free disk the recorder reports `guard: low` (metric and alert), still recording")
