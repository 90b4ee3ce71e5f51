"""Tracks: what each classroom of a session publishes, who receives what, on which ports, at which rates.

Plain functions, no database. A track is a dict as `schemas.TrackIn` loads it, completed by `complete`
with its codec's defaults. Who receives what:

- online research: every classroom receives every other classroom's tracks;
- otherwise the branches receive the master's tracks, and the master receives every branch's tracks
  (a branch publishes nothing unless the session is interactive).

Receive ports: a classroom registers a base port; the tracks it receives from one source take consecutive
even ports, and each source has `MAX_TRACKS_PER_CLASSROOM` pairs reserved, in the order of its `slot` (fixed
when it was added to the session), so a classroom joining later never moves another one's ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from services.classroom_relay.schemas import (
    AAC_SAMPLE_RATES,
    CODEC_DEFAULTS,
    DEFAULT_CAMERA_BPS,
    MAX_TRACKS_PER_CLASSROOM,
)

Track = dict[str, Any]
FIXED_CLOCK_RATES = {"opus": 48000, "pcma": 8000, "pcmu": 8000, "h264": 90000}


def audio(codec: str = "opus") -> Track:
    return complete({"track": "audio", "kind": "audio", "codec": codec})


def camera(bps: int = DEFAULT_CAMERA_BPS) -> Track:
    return complete({"track": "camera", "kind": "video", "layers_bps": [bps]})


def default_tracks(camera_bps: int = DEFAULT_CAMERA_BPS) -> list[Track]:
    """What a classroom publishes unless it says otherwise: its voice first, then its camera."""
    return [audio(), camera(camera_bps)]


def aac_config(clock_rate: int, channels: int) -> str:
    """AAC-LC AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1): object type 2, frequency index, channels."""
    index = AAC_SAMPLE_RATES.index(clock_rate)
    return f"{(2 << 11) | (index << 7) | (channels << 3):04x}"


def complete(track: Track) -> Track:
    """A loaded TrackIn with every field set (codec defaults); ValueError for what no receiver could play."""
    kind = track["kind"]
    codec = track.get("codec") or ("opus" if kind == "audio" else "h264")
    defaults = CODEC_DEFAULTS[codec]
    clock_rate = track.get("clock_rate") or defaults["clock_rate"]
    fixed = FIXED_CLOCK_RATES.get(codec)
    if fixed is not None and clock_rate != fixed:
        raise ValueError(f"track {track['track']}: {codec} runs at {fixed} Hz, not {clock_rate}")
    if codec == "aac" and clock_rate not in AAC_SAMPLE_RATES:
        raise ValueError(f"track {track['track']}: AAC has no sample rate {clock_rate}")
    channels = track.get("channels") or defaults["channels"]
    if codec in ("pcma", "pcmu") and channels != 1:
        raise ValueError(f"track {track['track']}: G.711 is mono")
    payload_type = track.get("payload_type")
    if payload_type is None:
        payload_type = defaults["payload_type"]
    static = {"pcmu": 0, "pcma": 8}
    if payload_type in (0, 8) and static.get(codec) != payload_type:
        raise ValueError(f"track {track['track']}: payload type {payload_type} is "
                         f"{'PCMU' if payload_type == 0 else 'PCMA'}, not {codec}")
    layers = track.get("layers_bps") if kind == "video" else None
    if kind == "video" and not layers:
        layers = [DEFAULT_CAMERA_BPS]
    return {
        "track": track["track"],
        "kind": kind,
        "source": track.get("source") or ("microphone" if kind == "audio" else track["track"]),
        "codec": codec,
        "payload_type": payload_type,
        "clock_rate": clock_rate,
        "channels": channels if kind == "audio" else 0,
        "config": (track.get("config") or aac_config(clock_rate, channels)).lower() if codec == "aac" else None,
        "bps": sum(layers) if layers else (track.get("bps") or defaults["bps"]),
        "layers_bps": list(layers) if layers else None,
    }


def completed(tracks: Iterable[Track] | None, fallback: Sequence[Track]) -> list[Track]:
    """The given tracks completed (ValueError for two of one name), else a copy of `fallback`."""
    if tracks is None:
        return [dict(track) for track in fallback]
    found = [complete(track) for track in tracks]
    names = [track["track"] for track in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two tracks are named {sorted(name for name in set(names) if names.count(name) > 1)}")
    return found


def total_bps(tracks: Iterable[Track]) -> int:
    """Everything the tracks carry at their full rate (every simulcast layer)."""
    return sum(track["bps"] for track in tracks)


def least_bps(tracks: Iterable[Track]) -> tuple[int, int]:
    """(audio, lowest video layers): the least a receiver of these tracks must be able to carry."""
    tracks = list(tracks)
    audio_bps = sum(track["bps"] for track in tracks if track["kind"] == "audio")
    video_bps = sum(min(track["layers_bps"]) for track in tracks if track["kind"] == "video")
    return audio_bps, video_bps


def full_receive_bps(tracks: Iterable[Track]) -> int:
    """What a receiver of these tracks gets at best: audio and each video track's highest layer."""
    return sum(track["bps"] if track["kind"] == "audio" else max(track["layers_bps"]) for track in tracks)


def label(classroom_key: str, track: Track) -> str:
    return f"{classroom_key}/{track['track']}"


@dataclass(frozen=True)
class Member:
    """What routing needs of one classroom in a session."""

    classroom_id: int
    role: str
    slot: int
    tracks: tuple[Track, ...]


def sources_of(session_kind: str, receiver: Member, members: Sequence[Member]) -> list[Member]:
    """The members whose tracks `receiver` gets, in slot order."""
    if session_kind == "online_research":
        found = [member for member in members if member.classroom_id != receiver.classroom_id]
    elif receiver.role == "master":
        found = [member for member in members if member.role == "branch"]
    else:
        found = [member for member in members if member.role == "master"]
    return sorted(found, key=lambda member: member.slot)


@dataclass(frozen=True)
class Output:
    """One track as one receiver gets it: from which classroom, to which port."""

    source_classroom_id: int
    track: Track
    port: int
    mid: int


def receive_port(base: int, receiver_slot: int, source_slot: int, track_index: int) -> int:
    """The even port `receiver` gets track `track_index` of `source` on (see the module docstring)."""
    rank = source_slot if source_slot < receiver_slot else source_slot - 1
    return base + 2 * (MAX_TRACKS_PER_CLASSROOM * rank + track_index)


def outputs_for(session_kind: str, receiver: Member, members: Sequence[Member], base_port: int) -> list[Output]:
    outputs: list[Output] = []
    for source in sources_of(session_kind, receiver, members):
        for index, track in enumerate(source.tracks):
            port = receive_port(base_port, receiver.slot, source.slot, index)
            outputs.append(Output(source.classroom_id, track, port, len(outputs)))
    return outputs


def highest_port(session_kind: str, receiver: Member, members: Sequence[Member], base_port: int) -> int:
    """The highest RTCP port (RTP + 1) this receiver needs now; callers check it fits below 65536."""
    outputs = outputs_for(session_kind, receiver, members, base_port)
    return max((output.port for output in outputs), default=base_port) + 1
