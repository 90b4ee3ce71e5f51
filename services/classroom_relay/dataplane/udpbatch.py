"""recvmmsg(2) through ctypes, straight into the packet ring, and UDP GSO sends.

One ``mmsghdr`` per ring slot is prepared once: its iovec points at the slot and its name at the
slot's own ``sockaddr_in``. A receive call then only passes a pointer into that array, so a batch of
up to 64 datagrams costs one system call and no Python allocation per datagram.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct

from .buffer import PacketRing

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h; Python 3.11's socket module does not name it
SOCKADDR_BYTES = 16
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65_000


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


_MMSG_BYTES = ctypes.sizeof(_MMsgHdr)
_FLAGS_OFFSET = _MsgHdr.msg_flags.offset
_LENGTH_OFFSET = _MMsgHdr.msg_len.offset
_FLAGS = struct.Struct("=i")
_LENGTH = struct.Struct("=I")
_ADDRESS_KEY = struct.Struct("!Q")


def _load_recvmmsg():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    function.restype = ctypes.c_int
    return function


_recvmmsg = _load_recvmmsg()


def recvmmsg_available() -> bool:
    return _recvmmsg is not None


class RingReceiver:
    """Receives batches of datagrams from one socket into consecutive ring slots.

    After ``receive`` returned n > 0, slots ``first .. first+n-1`` hold the datagrams; ``length(slot)``,
    ``truncated(slot)`` and ``source_key(slot)`` describe each one.
    """

    def __init__(self, sock: socket.socket, ring: PacketRing, batch: int = 64) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.ring = ring
        self.batch = batch
        self.names = bytearray(SOCKADDR_BYTES * ring.slot_count)
        self.names_view = memoryview(self.names)
        self.use_recvmmsg = _recvmmsg is not None
        self.fallback_lengths = [0] * ring.slot_count
        self.fallback_keys = [0] * ring.slot_count
        if self.use_recvmmsg:
            self._prepare_headers()

    def _prepare_headers(self) -> None:
        ring = self.ring
        count = ring.slot_count
        self.iovecs = (_IoVec * count)()
        self.headers = (_MMsgHdr * count)()
        data_base = ctypes.addressof(ctypes.c_char.from_buffer(ring.data))
        names_base = ctypes.addressof(ctypes.c_char.from_buffer(self.names))
        iovecs_base = ctypes.addressof(self.iovecs)
        for slot in range(count):
            self.iovecs[slot].iov_base = data_base + slot * ring.slot_bytes
            self.iovecs[slot].iov_len = ring.slot_bytes
            header = self.headers[slot].msg_hdr
            header.msg_name = names_base + slot * SOCKADDR_BYTES
            header.msg_namelen = SOCKADDR_BYTES
            header.msg_iov = iovecs_base + slot * ctypes.sizeof(_IoVec)
            header.msg_iovlen = 1
        self.headers_base = ctypes.addressof(self.headers)
        self.headers_view = memoryview(self.headers).cast("B")

    def receive(self) -> tuple[int, int]:
        """(first slot, count) of the datagrams read now; count 0 when the socket had nothing."""
        ring = self.ring
        first = ring.next_slot
        room = min(self.batch, ring.slot_count - first)
        if self.use_recvmmsg:
            received = _recvmmsg(self.fd, self.headers_base + first * _MMSG_BYTES, room, MSG_DONTWAIT, None)
            if received <= 0:
                return first, 0
        else:
            received = self._receive_fallback(first, room)
        next_slot = first + received
        ring.next_slot = 0 if next_slot >= ring.slot_count else next_slot
        return first, received

    def _receive_fallback(self, first: int, room: int) -> int:
        ring = self.ring
        received = 0
        while received < room:
            slot = first + received
            start = slot * ring.slot_bytes
            try:
                size, address = self.sock.recvfrom_into(
                    ring.view[start : start + ring.slot_bytes], 0, socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self.fallback_lengths[slot] = size
            raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", address[1]) + socket.inet_aton(address[0])
            self.names[slot * SOCKADDR_BYTES : slot * SOCKADDR_BYTES + 8] = raw
            received += 1
        return received

    def length(self, slot: int) -> int:
        if self.use_recvmmsg:
            return _LENGTH.unpack_from(self.headers_view, slot * _MMSG_BYTES + _LENGTH_OFFSET)[0]
        return self.fallback_lengths[slot]

    def truncated(self, slot: int) -> bool:
        if self.use_recvmmsg:
            return bool(_FLAGS.unpack_from(self.headers_view, slot * _MMSG_BYTES + _FLAGS_OFFSET)[0] & MSG_TRUNC)
        return False

    def source_key(self, slot: int) -> int:
        return _ADDRESS_KEY.unpack_from(self.names_view, slot * SOCKADDR_BYTES)[0]


def gso_available() -> bool:
    """Whether this kernel accepts UDP_SEGMENT (Linux ≥ 4.18)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.setsockopt(SOL_UDP, UDP_SEGMENT, 1200)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class GsoStage:
    """Per-output staging buffer: equal-size packets glued together and sent with one UDP_SEGMENT send.

    The kernel splits the buffer into datagrams of ``segment_bytes``; only the last may be shorter.
    """

    __slots__ = ("buffer", "last_is_short", "segment_bytes", "segments", "used", "view")

    def __init__(self) -> None:
        self.buffer = bytearray(GSO_MAX_BYTES + 2048)
        self.view = memoryview(self.buffer)
        self.segments = 0
        self.used = 0
        self.segment_bytes = 0
        self.last_is_short = False

    def must_flush_before(self, size: int) -> bool:
        return self.segments > 0 and (size > self.segment_bytes or self.last_is_short)

    def append(self, source: memoryview, start: int, size: int) -> int:
        """Copy a packet in; return its offset in the staging buffer (for header rewriting)."""
        position = self.used
        self.view[position : position + size] = source[start : start + size]
        if self.segments == 0:
            self.segment_bytes = size
        elif size < self.segment_bytes:
            self.last_is_short = True
        self.segments += 1
        self.used = position + size
        return position

    def full(self) -> bool:
        return self.segments >= GSO_MAX_SEGMENTS or self.used + self.segment_bytes > GSO_MAX_BYTES or self.last_is_short

    def flush(self, sock: socket.socket) -> int:
        """Send what is staged; returns the number of datagrams handed to the kernel."""
        segments = self.segments
        if segments == 0:
            return 0
        try:
            if segments == 1:
                sock.send(self.view[: self.used])
            else:
                sock.sendmsg(
                    (self.view[: self.used],),
                    ((SOL_UDP, UDP_SEGMENT, struct.pack("=H", self.segment_bytes)),),
                )
        finally:
            self.segments = 0
            self.used = 0
            self.last_is_short = False
        return segments
