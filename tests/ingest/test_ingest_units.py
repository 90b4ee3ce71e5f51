"""The ingest's parts without media peers: stream keys, the RTP hop's continuity rewrite, ffmpeg command lines,
URL redaction, the control channel's validation, and the supervisor restarting a failing process with back-off."""

from __future__ import annotations

import itertools
import struct
import sys
import time

import pytest

from services.classroom_relay.dataplane import rtp
from services.classroom_relay.dataplane.admission import issue_token
from services.classroom_relay.ingest import keys, pipelines
from services.classroom_relay.ingest.control import IngestControl
from services.classroom_relay.ingest.rtp_hop import Continuity
from services.classroom_relay.ingest.supervisor import IngestSpec, Supervisor

SECRET = b"unit-secret"


def token(session: str = "session-4", classroom: str = "classroom-7", ttl: float = 600) -> str:
    return issue_token(SECRET, session, classroom, ttl)


def test_stream_key_is_bound_to_the_token_and_expires_with_it() -> None:
    first = token()
    key = keys.stream_key(first)
    assert key.startswith("session-4.classroom-7.") and keys.parse_key(key) == ("session-4", "classroom-7")
    assert keys.check_key(key, first) is None
    assert keys.check_key(key, token(ttl=900)) == "wrong_key"  # a renewed token: a new key
    assert keys.check_key(key.replace("classroom-7", "classroom-8"), first) == "wrong_key"
    assert keys.check_key(key[:-1] + ("A" if key[-1] != "A" else "B"), first) == "wrong_key"
    assert keys.check_key("rtmp-key", first) == "malformed"
    assert keys.check_key(key, first, now=time.time() + 601) == "expired"
    assert keys.stream_key(first) == key  # stable: the recording host is configured once per lesson


def test_a_token_that_is_not_one_is_refused() -> None:
    for bad in ("", "v1.x", "v2.a.b", "v1.!!!.sig"):
        with pytest.raises(ValueError):
            keys.token_binding(bad)


def packet(seq: int, ts: int, ssrc: int) -> bytearray:
    return bytearray(rtp.build_rtp(b"\x01" * 10, sequence_number=seq, timestamp=ts, ssrc=ssrc))


def fields(data: bytearray) -> tuple[int, int, int]:
    return struct.unpack_from("!HII", data, 2)


def test_continuity_makes_successive_ffmpeg_runs_one_stream() -> None:
    continuity = Continuity(clock_rate=90_000, out_ssrc=0xABC)
    first = [packet(100 + index, 5000 + 3000 * index, 0x11) for index in range(3)]
    assert [continuity.rewrite(item, 10.0 + index * 0.033) for index, item in enumerate(first)] == [True, False, False]
    seq0, ts0, ssrc = fields(first[0])
    assert ssrc == 0xABC and [fields(item)[0] for item in first] == [seq0, seq0 + 1, seq0 + 2]
    # ffmpeg restarted 2 s later: a new SSRC, sequence and timestamp base.
    again = packet(7, 900_000_000, 0x22)
    assert continuity.rewrite(again, 12.066)
    seq, ts, ssrc = fields(again)
    assert ssrc == 0xABC and seq == (seq0 + 3) & 0xFFFF
    assert ts == (ts0 + 6000 + 2 * 90_000) & 0xFFFFFFFF  # the wall time between the two runs, in ticks


def test_commands_copy_video_and_audio_or_transcode_audio_only() -> None:
    outs = [pipelines.TrackOut("audio", "audio", "aac", 97, 40000),
            pipelines.TrackOut("camera", "video", "h264", 96, 40002)]
    command = pipelines.rtmp_command("ffmpeg", "rtmp://127.0.0.1:1935/live/k", outs, 0x7FFFFFFF)
    assert command[command.index("-map") + 1] == "0:a:0" and "copy" in command
    assert command.count("copy") == 2 and "libx264" not in command
    assert "-ssrc" in command and all(0 <= int(command[i + 1]) < 2**31 for i, a in enumerate(command) if a == "-ssrc")
    opus = pipelines.rtsp_command("ffmpeg", "rtsp://cam/1", [pipelines.TrackOut("audio", "audio", "opus", 111, 40000),
                                                           outs[1]], 1)
    assert "libopus" in opus and opus.count("copy") == 1 and opus[opus.index("-rtsp_transport") + 1] == "tcp"


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://admin:s3cret@10.0.0.5:554/h264", "rtsp://***@10.0.0.5:554/h264"),
    ("rtsp://10.0.0.5/stream1", "rtsp://10.0.0.5/stream1"),
    ("rtsp://user:p@ss@cam/x", "rtsp://***@cam/x"),
    ("garbage", "<not a URL>"),
])
def test_redact_never_shows_credentials(url: str, shown: str) -> None:
    assert pipelines.redact(url) == shown


def entry(**changes: object) -> dict:
    base = {"session": "session-4", "classroom": "classroom-7", "kind": "rtmp", "token": token(),
            "media_address": ["127.0.0.1", 5004], "tracks": [{"track": "camera", "kind": "video"}]}
    return {**base, **changes}


@pytest.mark.parametrize(("changes", "message"), [
    ({"kind": "srt"}, "kind must be rtmp or rtsp"),
    ({"token": token(classroom="classroom-8")}, "token must be this classroom's"),
    ({"token": "nope"}, "token must be"),
    ({"media_address": ["relay", 5004]}, "IPv4"),
    ({"media_address": ["127.0.0.1", 70000]}, "media_address"),
    ({"tracks": []}, "tracks must list"),
    ({"tracks": [{"track": "camera", "kind": "video", "codec": "vp8"}]}, "must be h264"),
    ({"tracks": [{"track": "Audio!", "kind": "audio"}]}, "name matching"),
    ({"tracks": [{"track": "a", "kind": "audio", "codec": "mp3"}]}, "audio codec"),
    ({"tracks": [{"track": "camera", "kind": "video"}] * 2}, "repeat"),
    ({"kind": "rtsp"}, "rtsp_url"),
    ({"session": "s 1"}, "session and classroom"),
])
def test_control_refuses_a_bad_ingest_with_a_clear_message(changes: dict, message: str) -> None:
    control = IngestControl(Supervisor("ffmpeg", "rtmp://127.0.0.1:1/live"), "rtmp://relay:1935/live")
    reply = control.handle({"op": "set_state", "ingests": [entry(**changes)]})
    assert reply["ok"] is False and reply["error"] == "bad_request" and message in reply["message"], reply
    assert control.supervisor.ingests == {}  # nothing half-applied
    assert control.handle(["not", "an", "object"])["error"] == "bad_request"
    assert control.handle({"op": "format_disk"})["error"] == "unknown_op"


def test_a_failing_ingest_is_restarted_with_growing_back_off_and_stopped_at_session_end() -> None:
    # `python -c exit(3)` stands in for an ffmpeg that cannot reach its camera: it exits at once.
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    supervisor = Supervisor("ffmpeg", None)
    supervisor._start_command = lambda _ingest: failing  # type: ignore[method-assign]
    spec = IngestSpec("session-4", "classroom-7", "rtsp", token(), ("127.0.0.1", 9), ({"track": "camera",
                      "kind": "video", "codec": "h264", "payload_type": 96, "clock_rate": None},), "rtsp://cam/1")
    supervisor.set_state([spec])
    starts = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        supervisor.tick(time.monotonic())
        ingest = supervisor.ingests[("session-4", "classroom-7")]
        if ingest.process is not None and (not starts or starts[-1][1] is not ingest.process):
            starts.append((time.monotonic(), ingest.process))
        time.sleep(0.02)
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(starts)]
    assert 3 <= len(starts) <= 6, gaps  # 0.5, 1, 2, 4 s (± 20 %) apart: not a tight loop; each gap ≥ 1.33× the last
    assert all(later > earlier * 1.25 for earlier, later in itertools.pairwise(gaps)), gaps
    assert supervisor.snapshot()["ingests"][0]["reconnects"] == len(starts) - 1
    assert supervisor.snapshot()["ingests"][0]["exits"][0] == 3
    supervisor.set_state([])  # the session ended
    assert supervisor.ingests == {} and all(process.poll() is not None for _at, process in starts)
