"""Helpers for the data-plane tests with real media peers (ffmpeg, GStreamer): the desired state of a session in
protocol 2, and a receiver's SDP built from the outputs the data plane reports (the control plane builds the
real one, tested in tests/relay_control; here only what a decoder needs to play the relay's outputs)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

FFMPEG = shutil.which("ffmpeg")
GST_LAUNCH = shutil.which("gst-launch-1.0")

AUDIO_OPUS = {"track": "audio", "kind": "audio", "source": "microphone", "clock_rate": 48_000}
CAMERA = {"track": "camera", "kind": "video", "source": "camera", "clock_rate": 90_000}
COURSEWARE = {"track": "courseware", "kind": "video", "source": "courseware", "clock_rate": 90_000}

RTPMAP = {
    "audio": (111, "opus/48000/2"),
    "pcma": (8, "PCMA/8000"),
    "video": (96, "H264/90000"),
}


def member(classroom: str, tracks: Iterable[dict] = (), receive: dict | None = None,
           senders: Iterable[dict] = ()) -> dict:
    entry: dict = {"classroom": classroom, "tracks": list(tracks), "senders": list(senders)}
    if receive is not None:
        entry["receive"] = receive
    return entry


def receive(budget: float, outputs: dict[tuple[str, str], int], host: str = "127.0.0.1") -> dict:
    """``outputs``: (source classroom, track) -> the receiver's RTP port for it."""
    return {"host": host, "budget_bytes_per_second": budget,
            "outputs": [{"source_classroom": source, "track": track, "port": port}
                        for (source, track), port in outputs.items()]}


def receiver_sdp(outputs: list[dict], ports: dict[tuple[str, str], int], kinds: dict[str, str]) -> str:
    """One ``m=`` per output of one receiver; ``a=rtcp`` names the output's own relay socket (RFC 3605)."""
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=relay test", "c=IN IP4 127.0.0.1", "t=0 0"]
    for output in outputs:
        key = (output["source_classroom"], output["track"])
        kind = kinds[output["track"]]
        payload_type, rtpmap = RTPMAP[kind if kind != "audio" else "audio"]
        media = "audio" if kind == "audio" else "video"
        lines += [f"m={media} {ports[key]} RTP/AVP {payload_type}", f"a=rtpmap:{payload_type} {rtpmap}"]
        if media == "video":
            lines.append(f"a=fmtp:{payload_type} packetization-mode=1")
        lines += ["a=recvonly", f"a=rtcp:{output['relay_address'][1]} IN IP4 127.0.0.1",
                  f"a=mid:{output['source_classroom']}-{output['track']}",
                  f"a=ssrc:{output['ssrc']} cname:{output['source_classroom']}"]
    return "\r\n".join(lines) + "\r\n"


def outputs_of(reply: dict, classroom: str) -> list[dict]:
    return [output for output in reply["outputs"] if output["classroom"] == classroom]


def run(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except Exception as error:
        if "TimeoutExpired" not in type(error).__name__:
            raise
        process.kill()
        stdout, stderr = process.communicate(timeout=5)
    return process.returncode, (stdout or b"").decode(errors="replace"), (stderr or b"").decode(errors="replace")


GST_CAPS_H264 = "application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload=96"


class LossyLink:
    """A UDP forwarder on 127.0.0.1 standing in for a lossy rural link (``tc netem`` is not available here):
    RTP from the relay to ``rtp_port`` loses ``loss`` of its packets (seeded, so runs repeat); RTCP both ways
    passes intact — the receiver's RTCP leaves from this link's RTP port + 1, as it would through a NAT that
    keeps port pairs."""

    def __init__(self, receiver_rtp_port: int, loss: float, seed: int = 11) -> None:
        import random
        import socket as socket_module

        from .relay_harness import free_udp_port_pair

        self.random = random.Random(seed)
        self.loss = loss
        self.receiver = ("127.0.0.1", receiver_rtp_port)
        port = free_udp_port_pair()
        self.rtp = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", port))
        self.rtcp = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM)
        self.rtcp.bind(("127.0.0.1", port + 1))
        self.port = port
        self.relay_rtcp: tuple[str, int] | None = None
        self.forwarded = self.dropped = 0
        self.stopped = False

    def run(self, seconds: float) -> None:
        import select
        import time

        deadline = time.monotonic() + seconds
        while not self.stopped and time.monotonic() < deadline:
            readable, _, _ = select.select([self.rtp, self.rtcp], [], [], 0.1)
            for sock in readable:
                data, source = sock.recvfrom(2048)
                if sock is self.rtp:
                    if 200 <= data[1] <= 206:
                        self.rtcp.sendto(data, (self.receiver[0], self.receiver[1] + 1))
                    elif self.random.random() < self.loss:
                        self.dropped += 1
                    else:
                        self.forwarded += 1
                        self.rtp.sendto(data, self.receiver)
                elif source[1] == self.receiver[1] + 1:  # the receiver's RTCP, to the relay's output socket
                    if self.relay_rtcp is not None:
                        self.rtcp.sendto(data, self.relay_rtcp)
                else:  # the relay's sender reports
                    self.rtcp.sendto(data, (self.receiver[0], self.receiver[1] + 1))

    def close(self) -> None:
        self.stopped = True
        self.rtp.close()
        self.rtcp.close()


def ffmpeg_framecrc_receiver(sdp_path: object, seconds: float, verbosity: str = "error") -> subprocess.Popen:
    """ffmpeg playing a receiver's SDP for ``seconds``, one framecrc line per decoded frame on stdout."""
    assert FFMPEG is not None
    return subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", verbosity, "-protocol_whitelist", "file,udp,rtp", "-i", str(sdp_path),
         "-t", str(seconds), "-f", "framecrc", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
