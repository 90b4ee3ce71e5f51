"""Sender hand-over with real encoders: a second address for a track takes it over only after the first sender
has been silent for ``HANDOVER_SILENCE_SECONDS`` (an encoder restarted on a new port), never while it is live
(admission.py). The unit test of the rule is in test_admission_sdp.py; here ffmpeg is both encoders and the
receiver."""

from __future__ import annotations

import subprocess
import time

import pytest

from services.classroom_relay.dataplane.admission import HANDOVER_SILENCE_SECONDS

from .media_peers import CAMERA, FFMPEG, ffmpeg_framecrc_receiver, member, outputs_of, receive, receiver_sdp, run
from .relay_harness import SECRET, free_udp_port_pair, stop_process
from .test_real_peers import framecrc_streams, say_hello

pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")


def ffmpeg_camera(media_port: int, local_port: int, size: str, ssrc: int, seconds: float) -> subprocess.Popen:
    assert FFMPEG is not None
    return subprocess.Popen(
        [FFMPEG, "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",
         "-bf", "0", "-b:v", "400k", "-ssrc", str(ssrc), "-payload_type", "96", "-f", "rtp",
         f"rtp://127.0.0.1:{media_port}?localport={local_port}&pkt_size=1200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_a_restarted_encoder_on_a_new_port_takes_the_track_only_after_three_seconds_of_silence(
    dataplane, tmp_path
) -> None:
    receiver_port = free_udp_port_pair()
    members = [member("master", [CAMERA]),
               member("branch-a", [], receive(1_250_000, {("master", "camera"): receiver_port}))]  # fmt: skip
    reply = dataplane.call("set_state", secrets=[SECRET], sessions=[{"session": "s1", "members": members}])
    port_a, port_b = free_udp_port_pair(), free_udp_port_pair()

    # Encoder A: 2 s of camera, then it stops (a crashed or restarted encoder).
    say_hello(dataplane, "master", "camera", port_a)
    time.sleep(0.1)
    encoder_a = ffmpeg_camera(dataplane.media_port, port_a, "320x240", 0x8001, 2)
    code_a, _out, errors_a = run(encoder_a, 15)
    stopped = time.monotonic()
    assert code_a == 0, errors_a
    track = dataplane.stats("s1")["sessions"]["s1"]["tracks"][0]
    assert track["packets_in"] > 0, track

    # Encoder B, same classroom, same valid token, another port: its hello, repeated every 0.2 s (bounded), is
    # refused while A has been silent for less than 3 s and accepted once it has.
    refused_at: list[float] = []
    accepted_at = None
    while time.monotonic() < stopped + HANDOVER_SILENCE_SECONDS + 3:
        taken_before = dataplane.stats()["drops"]["sender_taken"]
        say_hello(dataplane, "master", "camera", port_b)
        time.sleep(0.05)
        stats = dataplane.stats()
        if any(sender["address"][1] == port_b for sender in stats["senders"]):
            accepted_at = time.monotonic() - stopped
            break
        assert stats["drops"]["sender_taken"] == taken_before + 1, stats["drops"]
        refused_at.append(time.monotonic() - stopped)
        time.sleep(0.15)
    assert accepted_at is not None, refused_at
    print(f"hand-over: {len(refused_at)} hellos refused (last {max(refused_at, default=0):.2f} s after A stopped), "
          f"taken over {accepted_at:.2f} s after")
    # A's last packet left at most a moment before its process ended, so the silence the relay measured is at
    # least as long as ours: refusals only inside the first 3 s, the take-over within a hello period after it.
    assert refused_at and max(refused_at) < HANDOVER_SILENCE_SECONDS + 0.05, refused_at
    assert len(refused_at) >= 8, refused_at
    assert HANDOVER_SILENCE_SECONDS - 0.3 <= accepted_at <= HANDOVER_SILENCE_SECONDS + 0.6, accepted_at
    stats = dataplane.stats()
    assert stats["sender_handovers"] == 1
    assert stats["drops"]["sender_taken"] == len(refused_at)
    assert [sender["address"][1] for sender in stats["senders"]] == [port_b]

    # B's stream reaches the branch and decodes cleanly (B sends 640x360, A sent 320x240).
    sdp = tmp_path / "branch.sdp"
    sdp.write_text(receiver_sdp(outputs_of(reply, "branch-a"), {("master", "camera"): receiver_port},
                                {"camera": "video"}))  # fmt: skip
    receiver = ffmpeg_framecrc_receiver(sdp, 3)
    time.sleep(0.2)
    encoder_b = ffmpeg_camera(dataplane.media_port, port_b, "640x360", 0x8002, 5)
    try:
        code, framecrc, errors = run(receiver, 15)
        output = dataplane.stats("s1")["sessions"]["s1"]["outputs"][0]
    finally:
        stop_process(encoder_b)
        stop_process(receiver)
    assert code == 0 and errors.strip() == "", errors[-2000:]
    frames = framecrc_streams(framecrc)[0]
    assert len(frames) >= 25 * 2, len(frames)
    assert {size for _dts, size in frames} == {640 * 360 * 3 // 2}
    assert output["current_ssrc"] == 0x8002, output
