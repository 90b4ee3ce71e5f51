"""A lesson recorded end to end with real ffmpeg on both sides: live HLS while it runs, MP4 files at the end,
and what a failure leaves — a new part and a gap, never a broken file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .recorder_harness import (
    FFMPEG,
    RecorderProcess,
    decode_errors,
    ffprobe,
    manifest,
    recording_entry,
    start_sender,
    wait_until,
)

pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")


def _segments(recorder: RecorderProcess, key: str) -> int:
    entry = recorder.recording(key)
    return entry["segments"] if entry else 0


def _codecs(path: Path) -> dict[str, str]:
    return {stream["codec_type"]: stream["codec_name"] for stream in ffprobe(path)["streams"]}


def test_a_recorded_lesson_becomes_live_hls_then_mp4_files(recorder: RecorderProcess, media_base: int) -> None:
    sender = start_sender(media_base, 12, courseware=True)
    try:
        reply = recorder.call("set_state", recordings=[recording_entry("rec-1", media_base, courseware=True)])
        assert reply["ok"] and reply["refused"] == [], reply
        index = recorder.root / "rec-1" / "index.m3u8"
        wait_until(lambda: index.exists() and index.read_text().count(".m4s") >= 2, 15, "two live segments")
        live = index.read_text()
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in live and "#EXT-X-ENDLIST" not in live
        assert '#EXT-X-MAP:URI="part-000/init.mp4"' in live
        time.sleep(2)
        assert recorder.call("set_state", recordings=[])["ok"]
        done = recorder.wait_state("rec-1", ("finished",), timeout=25)
    finally:
        sender.kill()
        sender.wait()
    folder = recorder.root / "rec-1"
    assert done["files"] == {"hls": "index.m3u8", "courseware_hls": "courseware.m3u8", "program_mp4": "program.mp4",
                             "courseware_mp4": "courseware.mp4"}
    assert done["gaps"] == [] and done["tracks"][0] == {"track": "camera", "kind": "video", "source": "master-room",
                                                        "codec": "h264"}
    assert "#EXT-X-ENDLIST" in (folder / "index.m3u8").read_text()
    assert decode_errors(folder / "index.m3u8") == ""
    program = ffprobe(folder / "program.mp4")
    assert _codecs(folder / "program.mp4") == {"video": "h264", "audio": "opus"}
    duration = float(program["format"]["duration"])
    assert 4.0 <= duration <= 9.5, duration
    assert abs(duration - done["duration_seconds"]) < 1.0, (duration, done["duration_seconds"])
    assert decode_errors(folder / "program.mp4") == ""
    assert _codecs(folder / "courseware.mp4") == {"video": "h264"}
    # +faststart: the movie box comes before the media data.
    head = (folder / "program.mp4").read_bytes()[:4096]
    assert 0 <= head.find(b"moov") < head.find(b"mdat") or head.find(b"mdat") == -1
    saved = manifest(recorder.root, "rec-1")
    assert saved["state"] == "finished" and saved["bytes"] > 100_000 and saved["ended_at"].endswith("Z")
    # The control plane acknowledges: no longer reported, the files stay.
    assert recorder.call("forget", keys=["rec-1"])["forgotten"] == ["rec-1"]
    assert recorder.recording("rec-1") is None and (folder / "program.mp4").exists()
