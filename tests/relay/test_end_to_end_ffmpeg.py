"""Real encoder and decoders: ffmpeg sends two simulcast H.264 layers through the data plane, two ffmpeg
receivers play the SDPs the relay describes, one of them on a budget that only the lower layer fits."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from services.classroom_relay.dataplane.admission import build_hello, issue_token

from .media_peers import CAMERA, ffmpeg_framecrc_receiver, member, outputs_of, receive, receiver_sdp
from .relay_harness import SECRET, free_udp_port_pair, stop_process

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(
    FFMPEG is None, reason="ffmpeg is not installed (make system-deps-relay, or apt-get install ffmpeg)"
)

HIGH_SSRC = 0x1001
LOW_SSRC = 0x1002
FULL_FRAME_BYTES = 640 * 360 * 3 // 2  # yuv420p, as ffmpeg's framecrc reports decoded frame sizes
SMALL_FRAME_BYTES = 320 * 180 * 3 // 2
SEND_SECONDS = 6
RECEIVE_SECONDS = 2.5


def _encoder_output(ssrc: int, bitrate: str, media_port: int, local_port: int, size: str) -> list[str]:
    return [
        "-map", "0:v", "-s", size, "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-g", "25", "-bf", "0", "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
        "-ssrc", str(ssrc), "-payload_type", "96", "-f", "rtp",
        f"rtp://127.0.0.1:{media_port}?localport={local_port}&pkt_size=1200",
    ]  # fmt: skip


def _decoded_frame_sizes(framecrc: str) -> list[int]:
    sizes = []
    for line in framecrc.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        sizes.append(int(fields[4]))
    return sizes


def test_two_branches_decode_and_the_constrained_one_gets_the_lower_layer(dataplane, tmp_path) -> None:
    control = dataplane.control
    branch_ports = {"branch-a": free_udp_port_pair(), "branch-b": free_udp_port_pair()}
    # branch-a: a full 10 Mbit/s receiving classroom; branch-b: 480 kbit/s, too little for the 1.2 Mbit/s layer.
    budgets = {"branch-a": 10_000_000 / 8, "branch-b": 60_000}
    camera = {**CAMERA, "layers_bps": [200_000, 1_200_000]}
    members = [member("master-room", [camera])] + [
        member(classroom, receive=receive(budgets[classroom], {("master-room", "camera"): port}))
        for classroom, port in branch_ports.items()
    ]
    reply = control.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
    assert reply["ok"] and not reply["refused_outputs"], reply
    receivers = {}
    for classroom, port in branch_ports.items():
        sdp_path = tmp_path / f"{classroom}.sdp"
        sdp_path.write_text(receiver_sdp(outputs_of(reply, classroom), {("master-room", "camera"): port},
                                         {"camera": "video"}))
        receivers[classroom] = ffmpeg_framecrc_receiver(sdp_path, RECEIVE_SECONDS)

    high_port, low_port = free_udp_port_pair(), free_udp_port_pair()
    token = issue_token(SECRET.encode(), "s1", "master-room", ttl_seconds=60)
    # The high layer comes in with a hello datagram from the encoder's own RTP source port ...
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hello:
        hello.bind(("127.0.0.1", high_port))
        hello.sendto(build_hello(token), ("127.0.0.1", dataplane.media_port))  # camera, layer slot 0
    # ... the low layer (ffmpeg sends it from its own port: layer slot 1 of the same track) by registering
    # its address through the control channel.
    reply = control.call(
        "register_sender", session="s1", classroom="master-room", track="camera:1", token=token,
        address=["127.0.0.1", low_port],
    )
    assert reply["ok"], reply
    time.sleep(0.2)  # let the hello reach the relay before the encoder binds the same port

    sender = subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
         "-t", str(SEND_SECONDS),
         *_encoder_output(HIGH_SSRC, "1200k", dataplane.media_port, high_port, "640x360"),
         *_encoder_output(LOW_SSRC, "200k", dataplane.media_port, low_port, "320x180")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    outputs = {}
    try:
        for classroom, receiver in receivers.items():
            try:
                stdout, stderr = receiver.communicate(timeout=SEND_SECONDS + 8)
            except subprocess.TimeoutExpired:
                receiver.kill()
                stdout, stderr = receiver.communicate(timeout=5)
            outputs[classroom] = (receiver.returncode, stdout.decode(), stderr.decode())
        stats = dataplane.stats("s1")
    finally:
        for process in (sender, *receivers.values()):
            stop_process(process)

    for classroom, (returncode, framecrc, errors) in outputs.items():
        assert errors.strip() == "", f"{classroom} decoder errors: {errors}"
        assert returncode == 0, f"{classroom} ffmpeg exited {returncode}"
        sizes = _decoded_frame_sizes(framecrc)
        assert len(sizes) >= 25, f"{classroom} decoded only {len(sizes)} frames"
        expected = FULL_FRAME_BYTES if classroom == "branch-a" else SMALL_FRAME_BYTES
        assert set(sizes) == {expected}, f"{classroom} decoded frame sizes {set(sizes)}"

    by_classroom = {output["classroom"]: output for output in stats["sessions"]["s1"]["outputs"]}
    assert by_classroom["branch-a"]["current_ssrc"] == HIGH_SSRC
    assert by_classroom["branch-b"]["current_ssrc"] == LOW_SSRC
    assert by_classroom["branch-b"]["current_layer"] == 0
    assert by_classroom["branch-b"]["send_rate_bytes_per_second"] <= budgets["branch-b"]
    track = next(track for track in stats["sessions"]["s1"]["tracks"] if track["classroom"] == "master-room")
    assert {layer["ssrc"] for layer in track["layers"]} == {HIGH_SSRC, LOW_SSRC}
    assert track["keyframes_in"] >= 4
