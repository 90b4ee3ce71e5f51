"""The lesson rounds of `make bench-relay` (bench/relay_bench.py): a classroom's streams, each from its own
port, as a generator sends them and as the data plane is configured for them."""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time

from relay_wire import AUDIO_BYTES, AUDIO_PPS, PACKET_BYTES, RTP_HEADER, SEND_STAMP, SOL_UDP, UDP_SEGMENT

# A lesson's streams for the mixed rounds: (track slot, SSRC, packets per flood cycle (0: audio, paced at
# AUDIO_PPS), packet bytes). Each stream leaves its own port, as ffmpeg sends every stream and layer.
MIXES = {
    # teacher's voice, the camera in 3 simulcast layers (packet counts roughly as 2.5 / 0.8 / 0.4 Mbit/s),
    # the courseware screen
    "av": (("audio", 0x2000, 0, AUDIO_BYTES), ("camera:0", 0x1000, 24, PACKET_BYTES),
           ("camera:1", 0x1001, 8, PACKET_BYTES), ("camera:2", 0x1002, 4, PACKET_BYTES),
           ("courseware", 0x3000, 12, PACKET_BYTES)),
    # 名校网络课堂: voice and one camera layer to every classroom
    "wide": (("audio", 0x2000, 0, AUDIO_BYTES), ("camera", 0x1000, 24, PACKET_BYTES)),
}
# Rounds of 2 ms, each sending a quarter of a flood cycle's packets per stream; fewer at 1→200, where each
# packet costs 400 sends and a longer warm-up would overflow the relay's receive buffer.
MIX_WARMUP_ROUNDS = {"av": 150, "wide": 40}
MIX_KEYFRAME_CYCLES = 50  # a keyframe per video stream every this many flood cycles (a GOP, so layers can switch)


def mix_warmup_packets(mix: str) -> int:
    """Packets the generator sends in a mix's warm-up (the engine starts measuring after them)."""
    per_round = sum(max(1, per_cycle // 4) for _slot, _ssrc, per_cycle, _size in MIXES[mix] if per_cycle)
    audio_streams = sum(1 for _slot, _ssrc, per_cycle, _size in MIXES[mix] if not per_cycle)
    rounds = MIX_WARMUP_ROUNDS[mix]
    return rounds * per_round + audio_streams * (rounds + 9) // 10


def run_mix_generator(arguments: argparse.Namespace) -> None:
    """A lesson: every stream from its own port; video flooded in GSO bursts in the mix's proportions with a
    keyframe now and then, audio at its real rate (AUDIO_PPS). Warm-up first (keyframes, so the relay picks
    layers; packet counts in the same proportions, so the allocator ranks the layers as in the flood)."""
    streams = MIXES[arguments.mix]
    destination = ("127.0.0.1", arguments.port)
    sockets = []
    for source_port in arguments.source_ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind(("127.0.0.1", source_port))
        sock.connect(destination)
        sockets.append(sock)
    sequence = [0] * len(streams)
    sent = 0
    option = struct.pack("=H", PACKET_BYTES)

    def burst(index: int, count: int, keyframe: bool) -> bytes:
        _slot, ssrc, _per_cycle, size = streams[index]
        packets = []
        for number in range(count):
            header = RTP_HEADER.pack(0x80, 96, sequence[index] & 0xFFFF, (sequence[index] // 5 * 3600) & 0xFFFFFFFF,
                                     ssrc)  # fmt: skip
            first_octet = 0x65 if keyframe and number == 0 else 0x41
            packets.append(header + bytes((first_octet,)) + SEND_STAMP.pack(time.monotonic_ns()) + bytes(size - 21))
            sequence[index] += 1
        return b"".join(packets)

    def audio(index: int) -> None:
        _slot, ssrc, _per_cycle, size = streams[index]
        header = RTP_HEADER.pack(0x80, 8, sequence[index] & 0xFFFF, (sequence[index] * 960) & 0xFFFFFFFF, ssrc)
        sockets[index].send(header + bytes((0x78,)) + SEND_STAMP.pack(time.monotonic_ns()) + bytes(size - 21))
        sequence[index] += 1

    for round_number in range(MIX_WARMUP_ROUNDS[arguments.mix]):
        for index, (_slot, _ssrc, per_cycle, _size) in enumerate(streams):
            if not per_cycle:
                if round_number % 10 == 0:
                    audio(index)
                    sent += 1
                continue
            count = max(1, per_cycle // 4)
            packets = burst(index, count, round_number % 10 == 0)
            for number in range(count):
                sockets[index].send(packets[number * PACKET_BYTES : (number + 1) * PACKET_BYTES])
            sent += count
        time.sleep(0.002)
    time.sleep(0.05)
    start = time.monotonic()
    deadline = start + arguments.seconds
    audio_sent = 0
    cycle = 0
    while time.monotonic() < deadline and sent < arguments.max_packets:
        for index, (_slot, _ssrc, per_cycle, _size) in enumerate(streams):
            if not per_cycle:
                while audio_sent < (time.monotonic() - start) * AUDIO_PPS:
                    audio(index)
                    audio_sent += 1
                    sent += 1
                continue
            sockets[index].sendmsg((burst(index, per_cycle, cycle % MIX_KEYFRAME_CYCLES == 0),),
                                   ((SOL_UDP, UDP_SEGMENT, option),))  # fmt: skip
            sent += per_cycle
        cycle += 1
    print(json.dumps({"sent": sent}), flush=True)


def configure_mix(engine, mix: str, sinks: list[int], token: str, source_ports: list[int]) -> list:
    """The master publishes the mix's tracks (each stream from its own port); every sink port pair/triple is
    one receiving classroom with one output per track. Returns the first classroom's outputs."""
    from services.classroom_relay.dataplane.streams import TrackSpec
    from services.classroom_relay.dataplane.topology import MemberSpec, OutputSpec

    tracks = []
    for slot, _ssrc, _per_cycle, _size in MIXES[mix]:
        name = slot.partition(":")[0]
        if name in [track.name for track in tracks]:
            continue
        kind = "audio" if name == "audio" else "video"
        tracks.append(TrackSpec(name, kind, name, 48_000 if kind == "audio" else 90_000))
    members = [MemberSpec("master", tuple(tracks))]
    per_member = len(tracks)
    for index in range(len(sinks) // per_member):
        ports = sinks[index * per_member : (index + 1) * per_member]
        outputs = tuple(OutputSpec("master", track.name, port) for track, port in zip(tracks, ports, strict=True))
        members.append(MemberSpec(f"branch-{index}", (), "127.0.0.1", 1e9, outputs))
    _outputs, refused = engine.set_session("bench", members)
    assert not refused, refused
    for (slot, *_rest), port in zip(MIXES[mix], source_ports, strict=True):
        assert engine.register_sender("bench", "master", slot, token, ("127.0.0.1", port)) == 0
    return list(engine.sessions["bench"].members["branch-0"].outputs.values())
