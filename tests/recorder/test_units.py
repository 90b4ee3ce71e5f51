"""The recorder's pieces without media: composing the playlist from parts, reading ffmpeg's, the SDP split,
and the filesystem storage staying inside its root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.classroom_relay.recorder.control import BadRequest, parse_recording
from services.classroom_relay.recorder.playlist import ComposedPart, Segment, compose, read_part
from services.common.storage import BadKey, FilesystemStorage

from .recorder_harness import recording_entry


def _part(folder: str, count: int, first: int = 0) -> ComposedPart:
    return ComposedPart(f"{folder}/init.mp4",
                        tuple(Segment(f"{folder}/seg-{n:05d}.m4s", 2.0) for n in range(first, first + count)))


def test_parts_are_joined_with_a_discontinuity_and_their_own_init_segment() -> None:
    text = compose([_part("part-000", 2), _part("part-001", 0), _part("part-002", 1)], ended=False, keep=True,
                   segment_seconds=2)
    lines = text.splitlines()
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2"]
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in lines and "#EXT-X-ENDLIST" not in lines
    assert lines.count("#EXT-X-DISCONTINUITY") == 1  # the empty part adds none
    at = lines.index("#EXT-X-DISCONTINUITY")
    assert lines[at + 1:at + 4] == ['#EXT-X-MAP:URI="part-002/init.mp4"', "#EXTINF:2.000000,", "part-002/seg-00000.m4s"]
    ended = compose([_part("part-000", 2)], ended=True, keep=True, segment_seconds=2)
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in ended and ended.endswith("#EXT-X-ENDLIST\n")


def test_a_live_window_counts_what_left_it() -> None:
    text = compose([_part("part-000", 5), _part("part-001", 4)], ended=False, keep=False, segment_seconds=2)
    lines = text.splitlines()
    assert "#EXT-X-MEDIA-SEQUENCE:3" in lines and "#EXT-X-DISCONTINUITY-SEQUENCE:0" not in lines
    assert next(line for line in lines if line.endswith(".m4s")) == "part-000/seg-00003.m4s"
    assert lines.count('#EXT-X-MAP:URI="part-000/init.mp4"') == 1 and "#EXT-X-DISCONTINUITY" in lines
    later = compose([_part("part-000", 5), _part("part-001", 8)], ended=False, keep=False, segment_seconds=2)
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:1" in later and "#EXT-X-DISCONTINUITY\n" not in later
    assert "#EXT-X-PLAYLIST-TYPE" not in later


def test_reading_a_part_playlist_as_ffmpeg_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "stream.m3u8"
    path.write_text('#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:0\n'
                    '#EXT-X-MAP:URI="init.mp4"\n#EXTINF:2.995000,\nseg-00000.m4s\n#EXTINF:2.000000,\nseg-00001.m4s\n'
                    '#EXTINF:garbage,\nseg-00002.m4s\n')
    part = read_part(path, "part-003")
    assert part.init == "part-003/init.mp4" and not part.ended
    assert part.segments == [Segment("part-003/seg-00000.m4s", 2.995), Segment("part-003/seg-00001.m4s", 2.0)]
    assert read_part(tmp_path / "missing.m3u8", "part-000").segments == []


def test_the_program_and_the_courseware_get_their_own_sdp() -> None:
    spec = parse_recording(recording_entry("rec-1", 42000, courseware=True), (42000, 42999))
    assert set(spec.streams) == {"program", "courseware"}
    assert "m=video 42000 " in spec.streams["program"] and "m=audio 42002 " in spec.streams["program"]
    assert "m=video 42004" not in spec.streams["program"] and "m=video 42004 " in spec.streams["courseware"]
    assert spec.streams["courseware"].startswith("v=0\r\n") and "c=IN IP4 127.0.0.1" in spec.streams["courseware"]
    with pytest.raises(BadRequest, match="media ports"):
        parse_recording(recording_entry("rec-1", 42000), (43000, 43999))


def test_storage_keys_stay_inside_the_root(tmp_path: Path) -> None:
    storage = FilesystemStorage(tmp_path / "root")
    storage.ensure()
    for bad in ("../x", "a/b", "", "UPPER", "x" * 65, ".", ".."):
        with pytest.raises(BadKey):
            storage.folder(bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    os.symlink(outside, storage.root / "rec-link")
    with pytest.raises(BadKey):
        storage.delete("rec-link")
    assert (outside / "precious").exists() and storage.list_keys() == []
    folder = storage.folder("rec-1")
    (folder / "part-000").mkdir(parents=True)
    (folder / "part-000" / "seg-00000.m4s").write_bytes(b"x" * 1000)
    (folder / "manifest.json").write_text("{}")
    assert storage.list_keys() == ["rec-1"] and storage.usage_bytes("rec-1") == 1002
    usage = storage.usage()
    assert 0 < usage.free_bytes <= usage.total_bytes
    assert storage.delete("rec-1") is True and storage.delete("rec-1") is False and not folder.exists()
