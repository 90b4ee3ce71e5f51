"""recvmmsg(2) through ctypes, straight into the packet ring; sendmmsg(2) and UDP GSO sends from it.

One ``mmsghdr`` per ring slot is prepared once: its iovec points at the slot and its name at the
slot's own ``sockaddr_in``. A receive call then only passes a pointer into that array, so a batch of
up to 64 datagrams costs one system call and no Python allocation per datagram. The lengths, flags and
source addresses of a whole batch are then read with one ``struct`` call each.

Sending works the same way in reverse: ``RingGather`` lists the packets of a batch as iovecs pointing
into the ring (no copy), so an output sends a whole run with one sendmmsg, or with one sendmsg carrying
``UDP_SEGMENT`` (GSO) per ≤ 64 KB chunk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import socket
import struct
from collections.abc import Sequence

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


_IOVEC_BYTES = ctypes.sizeof(_IoVec)
_MSG_IOV_OFFSET = _MsgHdr.msg_iov.offset
_MSG_CONTROLLEN_OFFSET = _MsgHdr.msg_controllen.offset
_IOV_POINTER_AND_COUNT = struct.Struct("@PN")  # msg_iov, msg_iovlen (adjacent in struct msghdr)
# One UDP_SEGMENT control message: cmsghdr (len, level, type) then a u16, padded to CMSG_SPACE(2).
_CMSG_HEADER = struct.Struct("@Nii")
_CMSG_SPACE_U16 = _CMSG_HEADER.size + ctypes.sizeof(ctypes.c_size_t)
_CMSG_SEGMENT_SIZE = struct.Struct("=H")
_CMSG_CONTROLLEN = struct.Struct("@N")


def _load_libc(name: str, argtypes: tuple, restype: type):
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function


_recvmmsg = _load_libc(
    "recvmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p), ctypes.c_int
)
_sendmmsg = _load_libc("sendmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int), ctypes.c_int)
_sendmsg = _load_libc("sendmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_int), ctypes.c_ssize_t)


@functools.cache
def _flags_and_lengths(count: int) -> struct.Struct:
    """(msg_flags, msg_len) of ``count`` consecutive mmsghdr entries, in one unpack."""
    one = f"{_FLAGS_OFFSET}xi{_LENGTH_OFFSET - _FLAGS_OFFSET - 4}xI{_MMSG_BYTES - _LENGTH_OFFSET - 4}x"
    return struct.Struct("=" + one * count)


@functools.cache
def _address_keys(count: int) -> struct.Struct:
    """The ``address_key`` of ``count`` consecutive sockaddr slots, in one unpack."""
    return struct.Struct("!" + f"Q{SOCKADDR_BYTES - 8}x" * count)


@functools.cache
def _iovec_array(count: int) -> struct.Struct:
    return struct.Struct("@" + "PN" * count)


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

    def batch_metadata(self, first: int, count: int) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
        """(lengths, msg_flags, source keys) of slots ``first .. first+count-1``: three C calls, no loop."""
        keys = _address_keys(count).unpack_from(self.names, first * SOCKADDR_BYTES)
        if self.use_recvmmsg:
            flags_and_lengths = _flags_and_lengths(count).unpack_from(self.headers_view, first * _MMSG_BYTES)
            return flags_and_lengths[1::2], flags_and_lengths[0::2], keys
        return self.fallback_lengths[first : first + count], (0,) * count, keys

    def length(self, slot: int) -> int:
        if self.use_recvmmsg:
            return _LENGTH.unpack_from(self.headers_view, slot * _MMSG_BYTES + _LENGTH_OFFSET)[0]
        return self.fallback_lengths[slot]


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


def gso_chunks(sizes: Sequence[int], start: int) -> list[tuple[int, int, int]]:
    """Split datagrams (iovecs ``start ..``) into GSO sends: (first iovec, count, segment size).

    A chunk holds datagrams of one size, at most ``GSO_MAX_SEGMENTS`` and ``GSO_MAX_BYTES``; a shorter
    datagram may only end a chunk (the kernel cuts every segment but the last at the segment size).
    """
    count = len(sizes)
    chunks: list[tuple[int, int, int]] = []
    if not count:
        return chunks
    first_size = sizes[0]
    if sizes.count(first_size) == count:  # the usual batch: one size, chunks by arithmetic only
        per_chunk = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // first_size))
        for position in range(0, count, per_chunk):
            chunks.append((start + position, min(per_chunk, count - position), first_size))
        return chunks
    position = 0
    while position < count:
        segment = sizes[position]
        limit = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))
        end = position + 1
        while end < count and end - position < limit:
            size = sizes[end]
            if size > segment:
                break
            end += 1
            if size < segment:
                break
        chunks.append((start + position, end - position, segment))
        position = end
    return chunks


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

    def flush(self, sock: socket.socket, destination: tuple[str, int] | None) -> int:
        """Send what is staged to ``destination`` (None: ``sock``'s connected peer); returns the number of
        datagrams handed to the kernel."""
        segments = self.segments
        if segments == 0:
            return 0
        try:
            packet = self.view[: self.used]
            control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", self.segment_bytes))] if segments > 1 else []
            if destination is None:
                sock.sendmsg((packet,), control)
            else:
                sock.sendmsg((packet,), control, 0, destination)
        finally:
            self.segments = 0
            self.used = 0
            self.last_is_short = False
        return segments


def sendmmsg_available() -> bool:
    return _sendmmsg is not None and _sendmsg is not None


class RingGather:
    """Packets of one batch, in forwarding order, as iovecs pointing into the packet ring.

    ``load`` fills the iovecs once per batch (one ``struct`` call); every output then sends any
    contiguous range of them with ``send_each`` (sendmmsg, one datagram per iovec) or ``send_segmented``
    (sendmsg with UDP_SEGMENT: the kernel cuts the gathered bytes into equal datagrams). Headers are
    rewritten in the ring, per output, just before its send; the kernel copies during the call.
    """

    def __init__(self, ring: PacketRing, capacity: int) -> None:
        self.capacity = capacity
        self.ring_base = ctypes.addressof(ctypes.c_char.from_buffer(ring.data))
        self.slot_bytes = ring.slot_bytes
        self.iovecs = (_IoVec * capacity)()
        self.iovecs_base = ctypes.addressof(self.iovecs)
        self.iovecs_view = memoryview(self.iovecs).cast("B")
        self.messages = (_MMsgHdr * capacity)()
        for index in range(capacity):  # sendmmsg: message i carries iovec i, prepared once
            header = self.messages[index].msg_hdr
            header.msg_iov = self.iovecs_base + index * _IOVEC_BYTES
            header.msg_iovlen = 1
        self.messages_base = ctypes.addressof(self.messages)
        self.control = (ctypes.c_char * _CMSG_SPACE_U16)()
        _CMSG_HEADER.pack_into(self.control, 0, _CMSG_HEADER.size + 2, SOL_UDP, UDP_SEGMENT)
        self.segment_message = _MsgHdr()
        self.segment_message.msg_control = ctypes.addressof(self.control)
        self.segment_message_address = ctypes.addressof(self.segment_message)
        self.segment_message_view = memoryview(self.segment_message).cast("B")
        self.last_errno = 0

    def load(self, slots: Sequence[int], sizes: Sequence[int]) -> None:
        """Point iovec i at ``slots[i]`` with length ``sizes[i]``."""
        count = len(slots)
        base, slot_bytes = self.ring_base, self.slot_bytes
        pairs: list[int] = [0] * (2 * count)
        if isinstance(slots, range):  # consecutive slots (a whole batch): addresses by arithmetic, in C
            pairs[0::2] = range(base + slots.start * slot_bytes, base + slots.stop * slot_bytes, slot_bytes)
        else:
            pairs[0::2] = [base + slot * slot_bytes for slot in slots]
        pairs[1::2] = sizes
        _iovec_array(count).pack_into(self.iovecs_view, 0, *pairs)

    def messages_to(self, sockaddr: bytearray) -> tuple[ctypes.Array, int]:
        """sendmmsg headers for one destination (an unconnected output socket): message i carries iovec i
        and the destination ``sockaddr``. Kept by the output; the caller must keep ``sockaddr`` alive."""
        messages = (_MMsgHdr * self.capacity)()
        name = ctypes.addressof(ctypes.c_char.from_buffer(sockaddr))
        for index in range(self.capacity):
            header = messages[index].msg_hdr
            header.msg_iov = self.iovecs_base + index * _IOVEC_BYTES
            header.msg_iovlen = 1
            header.msg_name = name
            header.msg_namelen = SOCKADDR_BYTES
        return messages, ctypes.addressof(messages)

    def send_each(self, fd: int, start: int, count: int, messages_base: int = 0) -> int:
        """sendmmsg of iovecs ``start .. start+count-1`` (with the headers at ``messages_base``: one
        destination's, see ``messages_to``); datagrams sent, or -1 (``last_errno``) if none."""
        sent = _sendmmsg(fd, (messages_base or self.messages_base) + start * _MMSG_BYTES, count, MSG_DONTWAIT)
        if sent < 0:
            self.last_errno = ctypes.get_errno()
        return sent

    def send_segmented(self, fd: int, start: int, count: int, segment_bytes: int, sockaddr_address: int = 0) -> bool:
        """One GSO send of iovecs ``start .. start+count-1`` (all ``segment_bytes`` long but the last), to the
        ``sockaddr_in`` at ``sockaddr_address`` (0: the connected peer)."""
        view = self.segment_message_view
        self.segment_message.msg_name = sockaddr_address or None
        self.segment_message.msg_namelen = SOCKADDR_BYTES if sockaddr_address else 0
        _IOV_POINTER_AND_COUNT.pack_into(view, _MSG_IOV_OFFSET, self.iovecs_base + start * _IOVEC_BYTES, count)
        if count > 1:
            _CMSG_SEGMENT_SIZE.pack_into(self.control, _CMSG_HEADER.size, segment_bytes)
            _CMSG_CONTROLLEN.pack_into(view, _MSG_CONTROLLEN_OFFSET, _CMSG_SPACE_U16)
        else:  # a single datagram needs no segmentation
            _CMSG_CONTROLLEN.pack_into(view, _MSG_CONTROLLEN_OFFSET, 0)
        if _sendmsg(fd, self.segment_message_address, 0) < 0:
            self.last_errno = ctypes.get_errno()
            return False
        return True
