"""What the relay benchmark's generators put on the wire (bench/relay_bench.py, bench/relay_lessons.py)."""

from __future__ import annotations

import struct

PACKET_BYTES = 1200
AUDIO_BYTES = 172  # 20 ms of PCMA/Opus at 64 kbit/s + the RTP header
AUDIO_PPS = 50
RTP_HEADER = struct.Struct("!BBHII")
SEND_STAMP = struct.Struct("!Q")
UDP_SEGMENT = 103
SOL_UDP = 17
