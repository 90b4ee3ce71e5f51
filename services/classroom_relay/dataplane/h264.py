"""H.264 keyframe detection in RTP payloads (RFC 6184).

A layer switch must land on the first packet of a keyframe access unit, otherwise the receiving
decoder sees a P-frame that references pictures of another layer. Encoders such as x264 repeat
SPS/PPS in-band right before every IDR, so an SPS starts a keyframe as much as an IDR slice does.
"""

from __future__ import annotations

NAL_TYPE_IDR = 5
NAL_TYPE_SPS = 7
NAL_TYPE_STAP_A = 24
NAL_TYPE_FU_A = 28

_KEYFRAME_NAL_TYPES = (NAL_TYPE_IDR, NAL_TYPE_SPS)


def is_keyframe_start(payload: bytes | bytearray | memoryview, offset: int, length: int) -> bool:
    """True when this payload begins (or is) a keyframe: IDR/SPS single NAL, in a STAP-A, or FU-A start."""
    if length < 1:
        return False
    nal_type = payload[offset] & 0x1F
    if nal_type in _KEYFRAME_NAL_TYPES:
        return True
    if nal_type == NAL_TYPE_FU_A:
        if length < 2:
            return False
        fu_header = payload[offset + 1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) == NAL_TYPE_IDR
    if nal_type == NAL_TYPE_STAP_A:
        position = offset + 1
        end = offset + length
        while position + 2 < end:  # 2-byte NALU size, then at least the NAL header
            nal_size = (payload[position] << 8) | payload[position + 1]
            if nal_size == 0 or position + 2 + nal_size > end:
                return False  # malformed aggregate: do not trust anything inside it
            if payload[position + 2] & 0x1F in _KEYFRAME_NAL_TYPES:
                return True
            position += 2 + nal_size
    return False
