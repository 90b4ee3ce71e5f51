"""What failures leave: ffmpeg killed mid-lesson, the recorder itself killed and started again — a new part
and a gap in the manifest, the segments so far intact, the playlist decoding without an error."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from .recorder_harness import (
    FFMPEG,
    RecorderProcess,
    decode_errors,
    manifest,
    recording_entry,
    start_recorder,
    start_sender,
    wait_until,
)

pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (make system-deps)")


def _listed(index: Path) -> list[str]:
    return [line for line in index.read_text().splitlines() if line.endswith(".m4s")] if index.exists() else []


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ffmpeg_killed_mid_recording_leaves_a_gap_and_a_new_part(recorder: RecorderProcess, media_base: int) -> None:
    sender = start_sender(media_base, 16)
    try:
        assert recorder.call("set_state", recordings=[recording_entry("rec-2", media_base)])["refused"] == []
        index = recorder.root / "rec-2" / "index.m3u8"
        wait_until(lambda: len(_listed(index)) >= 2, 15, "two segments of part 0")
        [pid] = recorder.ffmpeg_children("part-000")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: any(uri.startswith("part-001/") for uri in _listed(index)), 15, "a segment of part 1")
        wait_until(lambda: len([u for u in _listed(index) if u.startswith("part-001/")]) >= 2, 10, "part 1 going on")
        text = index.read_text()
        assert text.count("#EXT-X-DISCONTINUITY") == 1 and '#EXT-X-MAP:URI="part-001/init.mp4"' in text
        assert recorder.call("set_state", recordings=[])["ok"]
        done = recorder.wait_state("rec-2", ("finished",), timeout=25)
    finally:
        sender.kill()
        sender.wait()
    [gap] = done["gaps"]
    assert gap["reason"] == "ffmpeg_exit" and gap["stream"] == "program"
    assert 0 < gap["start_seconds"] <= gap["end_seconds"] < 20 and gap["playback_seconds"] > 0
    assert [part["index"] for part in done["parts"]] == [0, 1]
    assert decode_errors(recorder.root / "rec-2" / "index.m3u8") == ""
    assert decode_errors(recorder.root / "rec-2" / "program.mp4") == ""
    metrics = recorder_metrics(recorder)
    assert 'lianxiao_recorder_gaps_total{reason="ffmpeg_exit"} 1.0' in metrics
    assert "lianxiao_recorder_ffmpeg_restarts_total 1.0" in metrics


def recorder_metrics(recorder: RecorderProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{recorder.metrics_port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_a_killed_recorder_resumes_with_a_gap_and_the_earlier_segments_intact(root: Path, media_base: int) -> None:
    first = start_recorder(root, media_base)
    sender = start_sender(media_base, 22)
    second = None
    try:
        assert first.call("set_state", recordings=[recording_entry("rec-3", media_base)])["refused"] == []
        index = root / "rec-3" / "index.m3u8"
        wait_until(lambda: len(_listed(index)) >= 2, 15, "two segments before the crash")
        [orphan] = first.ffmpeg_children("part-000")
        first.process.kill()
        first.process.wait()
        # The kernel ends its ffmpeg with it (PR_SET_PDEATHSIG): nothing keeps writing part 0 or holding the ports.
        wait_until(lambda: not Path(f"/proc/{orphan}").exists() or "Z" in Path(f"/proc/{orphan}/stat").read_text()
                   .rpartition(")")[2].split()[0], 5, "the recorder's ffmpeg gone with it")
        before = {uri: _digest(root / "rec-3" / uri) for uri in _listed(index)}
        assert before
        second = start_recorder(root, media_base)
        assert second.call("set_state", recordings=[recording_entry("rec-3", media_base)])["refused"] == []
        wait_until(lambda: len([u for u in _listed(index) if u.startswith("part-001/")]) >= 2, 20, "part 1")
        assert second.call("set_state", recordings=[])["ok"]
        done = second.wait_state("rec-3", ("finished",), timeout=25)
    finally:
        sender.kill()
        sender.wait()
        first.stop()
        if second is not None:
            errors = second.stop()
            assert "Traceback" not in errors, errors
    assert {uri: _digest(root / "rec-3" / uri) for uri in before} == before
    assert [gap["reason"] for gap in done["gaps"]] == ["recorder_restart"]
    saved = manifest(root, "rec-3")
    assert [part["index"] for part in saved["parts"]] == [0, 1] and saved["state"] == "finished"
    assert decode_errors(root / "rec-3" / "index.m3u8") == ""
    assert decode_errors(root / "rec-3" / "program.mp4") == ""


def test_a_patrol_only_recording_keeps_a_window_and_leaves_nothing(recorder: RecorderProcess, media_base: int) -> None:
    sender = start_sender(media_base, 24)
    try:
        entry = recording_entry("rec-4", media_base, keep=False)
        assert recorder.call("set_state", recordings=[entry])["refused"] == []
        index = recorder.root / "rec-4" / "index.m3u8"
        wait_until(lambda: "#EXT-X-MEDIA-SEQUENCE:2" in (index.read_text() if index.exists() else ""), 30,
                   "the live window moving on")
        text = index.read_text()
        assert "#EXT-X-PLAYLIST-TYPE" not in text and len(_listed(index)) == 6
        segments = sorted((recorder.root / "rec-4" / "part-000").glob("*.m4s"))
        assert len(segments) <= 8, segments  # ffmpeg deletes what left the window
        # ffmpeg would follow a live playlist forever: decode the window as it is now, ended.
        snapshot = index.with_name("snapshot.m3u8")
        snapshot.write_text(text + "#EXT-X-ENDLIST\n")
        assert decode_errors(snapshot) == ""
        assert recorder.call("set_state", recordings=[])["ok"]
        done = recorder.wait_state("rec-4", ("finished",), timeout=25)
    finally:
        sender.kill()
        sender.wait()
    assert not (recorder.root / "rec-4").exists()
    assert done["files"]["program_mp4"] is None and done["keep"] is False


def test_media_pausing_ends_the_part_and_media_returning_starts_the_next(recorder: RecorderProcess,
                                                                        media_base: int) -> None:
    index = recorder.root / "rec-10" / "index.m3u8"
    assert recorder.call("set_state", recordings=[recording_entry("rec-10", media_base)])["refused"] == []
    first = start_sender(media_base, 6)
    try:
        wait_until(lambda: len(_listed(index)) >= 2, 15, "part 0")
        first.wait(timeout=15)
        # The classroom's encoder is silent for longer than the stall time (3 s here): ffmpeg ends part 0.
        wait_until(lambda: (entry := recorder.recording("rec-10")) and entry["gaps"], 10, "the gap opened")
        second = start_sender(media_base, 8)
        try:
            wait_until(lambda: len([u for u in _listed(index) if u.startswith("part-001/")]) >= 2, 20, "part 1")
        finally:
            second.kill()
            second.wait()
        assert recorder.call("set_state", recordings=[])["ok"]
        done = recorder.wait_state("rec-10", ("finished",), timeout=25)
    finally:
        first.kill()
        first.wait()
    [gap] = done["gaps"]
    assert gap["reason"] == "media_stopped" and gap["end_seconds"] - gap["start_seconds"] >= 2.5, gap
    assert [part["index"] for part in done["parts"]] == [0, 1]  # the runs that waited for media wrote no parts
    assert decode_errors(recorder.root / "rec-10" / "program.mp4") == ""


def test_a_stuck_ffmpeg_is_replaced_after_the_stall_time(recorder: RecorderProcess, media_base: int) -> None:
    sender = start_sender(media_base, 30)
    index = recorder.root / "rec-11" / "index.m3u8"
    try:
        assert recorder.call("set_state", recordings=[recording_entry("rec-11", media_base)])["refused"] == []
        wait_until(lambda: len(_listed(index)) >= 2, 15, "part 0")
        [pid] = recorder.ffmpeg_children("part-000")
        os.kill(pid, signal.SIGSTOP)  # alive, holding its ports, writing nothing
        wait_until(lambda: any(uri.startswith("part-001/") for uri in _listed(index)), 30, "part 1 after the stall")
        assert recorder.call("set_state", recordings=[])["ok"]
        done = recorder.wait_state("rec-11", ("finished",), timeout=25)
    finally:
        sender.kill()
        sender.wait()
    assert [gap["reason"] for gap in done["gaps"]] == ["stall"]
    assert decode_errors(index) == ""


def test_a_recording_whose_lesson_ended_while_the_recorder_was_down_is_finalized(root: Path,
                                                                                  media_base: int) -> None:
    first = start_recorder(root, media_base)
    sender = start_sender(media_base, 8)
    second = None
    try:
        assert first.call("set_state", recordings=[recording_entry("rec-12", media_base)])["refused"] == []
        wait_until(lambda: len(_listed(root / "rec-12" / "index.m3u8")) >= 2, 15, "two segments")
        first.process.kill()
        first.process.wait()
        second = start_recorder(root, media_base)
        # The control plane's first state after the restart no longer names rec-12: its lesson is over.
        assert second.call("set_state", recordings=[])["ok"]
        done = second.wait_state("rec-12", ("finished",), timeout=25)
    finally:
        sender.kill()
        sender.wait()
        first.stop()
        if second is not None:
            errors = second.stop()
            assert "Traceback" not in errors, errors
    assert done["gaps"] == [] and done["files"]["program_mp4"] == "program.mp4"
    assert "#EXT-X-ENDLIST" in (root / "rec-12" / "index.m3u8").read_text()
    assert decode_errors(root / "rec-12" / "program.mp4") == ""


def test_new_media_ports_for_the_same_key_continue_in_a_new_part(recorder: RecorderProcess, media_base: int) -> None:
    index = recorder.root / "rec-13" / "index.m3u8"
    first = start_sender(media_base, 20)
    second = None
    try:
        assert recorder.call("set_state", recordings=[recording_entry("rec-13", media_base)])["refused"] == []
        wait_until(lambda: len(_listed(index)) >= 2, 15, "part 0")
        # The relay restarted and placed the recorder's outputs on other ports of its block.
        moved = recording_entry("rec-13", media_base + 4)
        assert recorder.call("set_state", recordings=[moved])["refused"] == []
        first.kill()
        second = start_sender(media_base + 4, 12)
        wait_until(lambda: len([u for u in _listed(index) if u.startswith("part-001/")]) >= 2, 20, "part 1")
        assert recorder.call("set_state", recordings=[])["ok"]
        done = recorder.wait_state("rec-13", ("finished",), timeout=25)
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()
    assert [gap["reason"] for gap in done["gaps"]] == ["source_changed"]
    assert decode_errors(index) == "" and decode_errors(recorder.root / "rec-13" / "program.mp4") == ""
