"""Real media peers at the data-plane level (driven through protocol.py, no control plane): ffmpeg sends a lesson's
sound and picture, each stream from its own port as ffmpeg does; ffmpeg and GStreamer receive and decode."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from services.classroom_relay.dataplane.admission import build_hello, issue_token

from .media_peers import (
    AUDIO_OPUS,
    CAMERA,
    FFMPEG,
    GST_CAPS_H264,
    GST_LAUNCH,
    LossyLink,
    ffmpeg_framecrc_receiver,
    member,
    outputs_of,
    receive,
    receiver_sdp,
    run,
)
from .relay_harness import SECRET, UdpCollector, free_udp_port_pair, stop_process, wait_until

pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")

SEND_SECONDS = 5
RECEIVE_SECONDS = 3.0


def say_hello(plane, classroom: str, track: str, port: int) -> None:
    token = issue_token(SECRET.encode(), "s1", classroom, ttl_seconds=60)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hello:
        hello.bind(("127.0.0.1", port))
        hello.sendto(build_hello(token, track), ("127.0.0.1", plane.media_port))


def ffmpeg_lesson(media_port: int, audio_port: int, video_ports: dict[int, tuple[str, str]], seconds: float,
                  gop: int = 25) -> subprocess.Popen:
    """A test pattern with a 1 kHz tone: Opus from ``audio_port``, H.264 layers (ssrc → (size, bitrate)) from
    ``video_ports``, each output from its own local port as ffmpeg does."""
    command = [FFMPEG, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
               "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000", "-t", str(seconds),
               "-map", "1:a", "-c:a", "libopus", "-b:a", "48k", "-ssrc", "4660", "-payload_type", "111", "-f", "rtp",
               f"rtp://127.0.0.1:{media_port}?localport={audio_port}"]  # fmt: skip
    for index, (local_port, (size, bitrate)) in enumerate(video_ports.items()):
        command += ["-map", "0:v", "-s", size, "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                    "-g", str(gop), "-bf", "0", "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
                    "-ssrc", str(0x5000 + index), "-payload_type", "96", "-f", "rtp",
                    f"rtp://127.0.0.1:{media_port}?localport={local_port}&pkt_size=1200"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def framecrc_streams(framecrc: str) -> dict[int, list[tuple[int, int]]]:
    """stream index → [(dts, size)] from ffmpeg's framecrc muxer."""
    streams: dict[int, list[tuple[int, int]]] = {}
    for line in framecrc.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        streams.setdefault(int(fields[0]), []).append((int(fields[1]), int(fields[4])))
    return streams


def test_sound_and_picture_reach_two_branches_and_both_decode(dataplane, tmp_path) -> None:
    branches = {name: {("master", "audio"): free_udp_port_pair(), ("master", "camera"): free_udp_port_pair()}
                for name in ("branch-a", "branch-b")}  # fmt: skip
    members = [member("master", [AUDIO_OPUS, CAMERA])] + [
        member(name, [], receive(1_250_000, ports))
        for name, ports in branches.items()
    ]
    reply = dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
    assert not reply["refused_outputs"], reply
    receivers = {}
    for name, ports in branches.items():
        sdp = tmp_path / f"{name}.sdp"
        sdp.write_text(receiver_sdp(outputs_of(reply, name), ports, {"audio": "audio", "camera": "video"}))
        receivers[name] = ffmpeg_framecrc_receiver(sdp, RECEIVE_SECONDS)
    audio_port, video_port = free_udp_port_pair(), free_udp_port_pair()
    say_hello(dataplane, "master", "audio", audio_port)
    say_hello(dataplane, "master", "camera", video_port)
    time.sleep(0.2)
    sender = ffmpeg_lesson(dataplane.media_port, audio_port, {video_port: ("640x360", "800k")}, SEND_SECONDS)
    try:
        results = {name: run(process, SEND_SECONDS + 8) for name, process in receivers.items()}
        stats = dataplane.stats("s1")["sessions"]["s1"]
    finally:
        for process in (sender, *receivers.values()):
            stop_process(process)
    for name, (returncode, framecrc, errors) in results.items():
        assert returncode == 0 and errors.strip() == "", f"{name}: {returncode} {errors}"
        streams = framecrc_streams(framecrc)
        sizes = {index: {size for _dts, size in frames} for index, frames in streams.items()}
        video = next(index for index, found in sizes.items() if 640 * 360 * 3 // 2 in found)
        audio = next(index for index in streams if index != video)
        assert len(streams[video]) >= 25 * (RECEIVE_SECONDS - 1), f"{name}: {len(streams[video])} video frames"
        assert len(streams[audio]) >= 50 * (RECEIVE_SECONDS - 1), f"{name}: {len(streams[audio])} audio frames"
    tracks = {track["track"]: track for track in stats["tracks"]}
    assert tracks["audio"]["keyframe_requests_sent"] == 0 and tracks["audio"]["jitter_seconds"] is not None
    assert tracks["camera"]["keyframes_in"] >= 3


def test_ten_forced_layer_switches_keep_timestamps_monotonic(dataplane, tmp_path) -> None:
    """Two simulcast layers; the receiver's budget flips between them every 0.6 s (a push of desired state, as
    the control plane does): every switch lands on a keyframe and continues the timestamps one frame later."""
    receiver_port = free_udp_port_pair()
    camera = {**CAMERA, "layers_bps": [150_000, 900_000]}

    def push(budget: float) -> dict:
        members = [member("master", [camera]),
                   member("branch-a", [], receive(budget, {("master", "camera"): receiver_port}))]  # fmt: skip
        return dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])

    reply = push(1_250_000)
    sdp = tmp_path / "branch.sdp"
    sdp.write_text(receiver_sdp(outputs_of(reply, "branch-a"), {("master", "camera"): receiver_port},
                                {"camera": "video"}))
    seconds = 12
    receiver = ffmpeg_framecrc_receiver(sdp, seconds - 2, verbosity="warning")
    high_port, low_port = free_udp_port_pair(), free_udp_port_pair()
    say_hello(dataplane, "master", "camera:0", high_port)
    say_hello(dataplane, "master", "camera:1", low_port)
    time.sleep(0.2)
    command = [FFMPEG, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
               "-t", str(seconds)]  # fmt: skip
    for ssrc, port, size, bitrate in ((0x7001, high_port, "640x360", "700k"), (0x7002, low_port, "320x180", "100k")):
        command += ["-map", "0:v", "-s", size, "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                    "-g", "5", "-bf", "0", "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
                    "-ssrc", str(ssrc), "-payload_type", "96", "-f", "rtp",
                    f"rtp://127.0.0.1:{dataplane.media_port}?localport={port}&pkt_size=1200"]  # fmt: skip
    sender = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        deadline = time.monotonic() + seconds - 2
        budget_index = 0
        while time.monotonic() < deadline:  # bounded: ~16 flips
            budget_index += 1
            push(40_000 if budget_index % 2 else 1_250_000)
            time.sleep(0.6)
        _returncode, framecrc, errors = run(receiver, 10)
        output = dataplane.stats("s1")["sessions"]["s1"]["outputs"][0]
    finally:
        stop_process(sender)
        stop_process(receiver)
    assert output["layer_switches"] >= 10, output
    assert "non monotonically increasing dts" not in errors and "non monoton" not in errors, errors
    frames = framecrc_streams(framecrc)[0]
    steps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(frames)]
    assert steps and all(step > 0 for step in steps)
    # Time base 1/90000 in framecrc for RTP H.264: one frame at 25 fps is 3600 ticks; a switch is one frame too.
    assert max(steps) <= 3600 * 3, max(steps)
    assert len(frames) >= 25 * (seconds - 4)
    # (Decode errors can appear here: for up to ~0.5 s after a budget cut the pacer holds the high layer to the
    # new budget until the switch lands on the low layer's next keyframe. The subject is the timestamps.)


GST = pytest.mark.skipif(GST_LAUNCH is None, reason="GStreamer is not installed (make system-deps)")


@GST
def test_gstreamer_rtpbin_behind_five_percent_loss_is_repaired_by_nack(dataplane, tmp_path) -> None:
    receiver_port = free_udp_port_pair()
    link = LossyLink(receiver_port, loss=0.05)
    members = [member("master", [CAMERA]),
               member("branch-a", [], receive(1_250_000, {("master", "camera"): link.port}))]  # fmt: skip
    reply = dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
    link.relay_rtcp = tuple(reply["outputs"][0]["relay_address"])
    seconds = 8
    forwarding = threading.Thread(target=link.run, args=(seconds + 12,), daemon=True)
    forwarding.start()
    receiver = subprocess.Popen(
        [GST_LAUNCH, "-e", "-v", "rtpbin", "name=rb", "rtp-profile=avpf", "do-retransmission=true", "latency=400",
         "udpsrc", f"port={receiver_port}", f"caps={GST_CAPS_H264}", "!", "rb.recv_rtp_sink_0",
         "udpsrc", f"port={receiver_port + 1}", "!", "rb.recv_rtcp_sink_0",
         "rb.send_rtcp_src_0", "!", "udpsink", "host=127.0.0.1", f"port={link.port + 1}",
         f"bind-port={receiver_port + 1}", "sync=false", "async=false",
         "rb.", "!", "rtph264depay", "!", "avdec_h264", "!", "fakesink", "name=decoded", "silent=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "GST_DEBUG": "libav:2"},
    )  # fmt: skip
    video_port = free_udp_port_pair()
    say_hello(dataplane, "master", "camera", video_port)
    time.sleep(0.3)
    # A 10 s GOP: without retransmission every lost packet would damage the picture until the next keyframe.
    sender = subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "250",
         "-bf", "0", "-b:v", "400k", "-ssrc", "36865", "-payload_type", "96", "-f", "rtp",
         f"rtp://127.0.0.1:{dataplane.media_port}?localport={video_port}&pkt_size=1200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        sender.wait(timeout=seconds + 10)
        time.sleep(1.0)
        # rtpbin's regular reports come every few seconds (randomised, RFC 3550 §6.2); NACKs go out at once.
        wait_until(lambda: dataplane.stats("s1")["sessions"]["s1"]["outputs"][0]["reported"], timeout=6)
        output = dataplane.stats("s1")["sessions"]["s1"]["outputs"][0]
    finally:
        receiver.send_signal(signal.SIGINT)
        _code, log, errors = run(receiver, 10)
        stop_process(sender)
        link.close()
    decoded = log.count("decoded: last-message = chain")
    decode_errors = len(re.findall(r"error while decoding|concealing", errors))
    assert link.dropped >= 20, (link.dropped, link.forwarded)
    assert output["nacks_received"] >= link.dropped * 0.7, (output, link.dropped)
    assert output["retransmissions"] >= link.dropped * 0.7, (output, link.dropped)
    assert output["rtcp_from"] == ["127.0.0.1", link.port + 1], output
    assert output["reported"] and output["loss_ratio"] is not None, output
    assert decoded >= 25 * (seconds - 2), decoded
    assert decode_errors == 0, errors[-2000:]


@GST
def test_late_joiner_gets_a_keyframe_from_a_pli_honouring_encoder_within_500_ms(dataplane) -> None:
    members = [member("master", [CAMERA])]
    dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
    video_port = free_udp_port_pair()
    say_hello(dataplane, "master", "camera", video_port)
    time.sleep(0.2)
    # x264enc behind rtpbin: a PLI reaching its RTCP port (RTP port + 1) becomes a forced keyframe. Its own
    # keyframe interval is 300 frames (12 s), so only a keyframe request can explain a quick start.
    sender = subprocess.Popen(
        [GST_LAUNCH, "-e", "rtpbin", "name=rb", "rtp-profile=avpf",
         "videotestsrc", "is-live=true", "!", "video/x-raw,width=320,height=240,framerate=25/1", "!",
         "x264enc", "tune=zerolatency", "speed-preset=ultrafast", "key-int-max=300", "bitrate=400", "!",
         "rtph264pay", "pt=96", "ssrc=36866", "config-interval=-1", "!", "rb.send_rtp_sink_0",
         "rb.send_rtp_src_0", "!", "udpsink", "host=127.0.0.1", f"port={dataplane.media_port}",
         f"bind-port={video_port}",
         # Only a listener on RTP port + 1, where the relay sends RTCP to a sender it has not heard RTCP from
         # (a second socket bound to the same port for sending would take the datagrams half of the time).
         "udpsrc", f"port={video_port + 1}", "!", "rb.recv_rtcp_sink_0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    late = UdpCollector()
    try:
        assert wait_until(lambda: dataplane.stats("s1")["sessions"]["s1"]["tracks"][0]["packets_in"] > 50, 8)
        time.sleep(2.5)  # well past the first keyframe: the next scheduled one is ~10 s away
        members.append(member("late-branch", [], receive(1_250_000, {("master", "camera"): late.port})))
        joined = time.time()
        dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
        late.collect(1.5, keep=True)
        output = dataplane.stats("s1")["sessions"]["s1"]["outputs"][0]
        track = dataplane.stats("s1")["sessions"]["s1"]["tracks"][0]
    finally:
        sender.send_signal(signal.SIGINT)
        _code, _out, sender_errors = run(sender, 5)
        late.close()
    first = next((arrival for (arrival, _size), packet in zip(late.arrivals, late.packets, strict=True)
                  if not 200 <= packet[1] <= 206), None)  # fmt: skip
    fields = ("packets_out", "keyframes_out", "target_ssrc", "current_ssrc", "first_keyframe_after_seconds")
    assert first is not None, ({key: output[key] for key in fields}, track["keyframe_requests_sent"],
                               track["keyframes_in"], track["senders"], sender_errors)  # fmt: skip
    assert first - joined <= 0.5, f"first media {first - joined:.3f} s after joining"
    assert output["first_keyframe_after_seconds"] is not None and output["first_keyframe_after_seconds"] <= 0.5
    assert track["keyframe_requests_sent"] >= 1
    assert output["keyframes_out"] >= 1
