"""A broadcasting classroom and N receiving classrooms on 127.0.0.1, for the operations tests.

Sends paced RTP (H.264-looking payloads: an IDR slice every 15 packets so layer switches can happen)
to the relay from one socket, drains N sink sockets, prints {"sender_port", "sink_ports"} as one
JSON line and runs until terminated. Its own process, so eventlet's patching in pytest cannot slow it.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.classroom_relay.dataplane.rtp import build_rtp

PACKET_BYTES = 1200
SSRC = 0x1A2B3C4D


def drain(sinks: list[socket.socket]) -> None:
    selector = selectors.DefaultSelector()
    for sink in sinks:
        sink.setblocking(False)
        selector.register(sink, selectors.EVENT_READ)
    buffer = bytearray(2048)
    while True:
        for key, _events in selector.select(timeout=1.0):
            try:
                while True:
                    key.fileobj.recv_into(buffer)
            except BlockingIOError:
                pass


def send(sock: socket.socket, relay: tuple[str, int], bytes_per_second: float) -> None:
    interval = PACKET_BYTES / bytes_per_second
    idr = bytes([0x65]) + bytes(PACKET_BYTES - 13)  # 12-byte RTP header + IDR slice
    delta = bytes([0x41]) + bytes(PACKET_BYTES - 13)
    started = time.monotonic()
    sequence = 0
    while True:
        packet = build_rtp(idr if sequence % 15 == 0 else delta, sequence_number=sequence,
                           timestamp=(sequence // 5) * 3000, ssrc=SSRC, marker=sequence % 5 == 4)
        sock.sendto(packet, relay)
        sequence += 1
        delay = started + sequence * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay-port", type=int, required=True)
    parser.add_argument("--bytes-per-second", type=float, required=True)
    parser.add_argument("--sinks", type=int, default=1)
    arguments = parser.parse_args()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sinks = []
    for _ in range(arguments.sinks):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sinks.append(sink)
    print(json.dumps({"sender_port": sender.getsockname()[1], "sink_ports": [s.getsockname()[1] for s in sinks]}),
          flush=True)
    # The test registers the sender's address with the relay before media counts; a short head start.
    time.sleep(0.5)
    threading.Thread(target=drain, args=(sinks,), daemon=True).start()
    send(sender, ("127.0.0.1", arguments.relay_port), arguments.bytes_per_second)


if __name__ == "__main__":
    main()
