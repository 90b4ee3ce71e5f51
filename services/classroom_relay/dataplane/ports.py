"""The UDP ports the data plane may bind: every socket it opens comes from one configured range.

``RELAY_MEDIA_PORTS=40000-40999`` (or ``--media-ports``) names the range a firewall, a NAT or a
Kubernetes ``hostPort``/``NodePort`` range admits; without one the kernel picks ephemeral ports. When the
range is used up, ``bind_udp`` raises ``PortsExhausted`` and the caller refuses that one output.
"""

from __future__ import annotations

import contextlib
import errno
import socket


class PortsExhausted(OSError):
    pass


def parse_port_range(text: str | None) -> tuple[int, int] | None:
    """``"40000-40999"`` → (40000, 40999); empty → None. Raises ValueError with the reason."""
    if not text:
        return None
    low_text, separator, high_text = text.partition("-")
    try:
        low, high = int(low_text), int(high_text if separator else low_text)
    except ValueError as error:
        raise ValueError(f"media port range {text!r} is not LOW-HIGH") from error
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"media port range {text!r} must satisfy 1024 <= LOW <= HIGH <= 65535")
    return low, high


class PortPool:
    def __init__(self, host: str, port_range: tuple[int, int] | None) -> None:
        self.host = host
        self.range = port_range
        self.in_use: set[int] = set()
        self._cursor = port_range[0] if port_range else 0

    def contains(self, port: int) -> bool:
        return self.range is not None and self.range[0] <= port <= self.range[1]

    def bind_udp(self, port: int = 0, shareable: bool = False) -> socket.socket:
        """A UDP socket bound to ``port`` (must be in the range when there is one), or to the next free
        port of the range, or to an ephemeral port without a range.

        ``shareable``: bound with SO_REUSEPORT, so that the caller can bind a connected twin to the same
        port (streams.py ``connected_twin``, which clears the option on both again)."""
        if port or self.range is None:
            if port and self.range is not None and not self.contains(port):
                raise ValueError(f"port {port} is outside the media port range {self.range[0]}-{self.range[1]}")
            sock = self._try_bind(port, shareable)
            if sock is None:
                raise OSError(errno.EADDRINUSE, f"UDP port {port} is in use")
            return sock
        low, high = self.range
        size = high - low + 1
        for step in range(size):
            candidate = low + (self._cursor - low + step) % size
            if candidate in self.in_use:
                continue
            sock = self._try_bind(candidate, shareable)
            if sock is not None:
                self._cursor = low + (candidate - low + 1) % size
                return sock
        raise PortsExhausted(errno.EADDRINUSE, f"no free UDP port left in {low}-{high}")

    def _try_bind(self, port: int, shareable: bool = False) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if shareable:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            if port == 0:
                raise
            return None
        self.in_use.add(sock.getsockname()[1])
        return sock

    def release(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.in_use.discard(sock.getsockname()[1])
        sock.close()
