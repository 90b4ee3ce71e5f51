"""The MP4 files of a finished recording: one per stream (`program.mp4` camera + audio, `courseware.mp4`),
remuxed without re-encoding from the HLS parts, `+faststart` (the index first, so a player starts at once
and nginx's `mp4` module cuts clips without reading the whole file).

A part's init segment followed by its segments is itself a fragmented MP4 (ISO/IEC 14496-12 §8.8), so each
part is one file by concatenation; ffmpeg's concat demuxer then joins the parts, each part starting where the
last ended — gaps take no time in the MP4, as in the HLS playlist (the manifest says where they are).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

from services.common.storage import remove_tree

from .playlist import ComposedPart

log = logging.getLogger("lianxiao.recorder")

REMUX_TIMEOUT_SECONDS = 600.0


def media_bytes(folder: Path, parts: list[ComposedPart]) -> int:
    total = 0
    for part in parts:
        for uri in (part.init, *(segment.uri for segment in part.segments)):
            try:
                total += (folder / uri).stat().st_size
            except FileNotFoundError:
                continue
    return total


def remux(ffmpeg: str, folder: Path, parts: list[ComposedPart], output: str, free_bytes: int) -> str | None:
    """Write `folder/output` from the parts; None when written, else why not (the HLS stays playable)."""
    parts = [part for part in parts if part.segments]
    if not parts:
        return "no segments"
    size = media_bytes(folder, parts)
    if free_bytes < 2 * size + 64 * 1024**2:  # the joined parts and the MP4 both, with room to spare
        return "not enough free disk for the MP4"
    work = folder / ".finalize"
    remove_tree(work)
    try:
        work.mkdir()
        listing = []
        for number, part in enumerate(parts):
            joined = work / f"part-{number:03d}.mp4"
            with open(joined, "wb") as sink:
                for uri in (part.init, *(segment.uri for segment in part.segments)):
                    try:
                        # Never through a link: a planted one would copy a file from outside into the MP4.
                        with os.fdopen(os.open(folder / uri, os.O_RDONLY | os.O_NOFOLLOW), "rb") as source:
                            shutil.copyfileobj(source, sink, 1024 * 1024)
                    except FileNotFoundError:
                        log.warning("recording %s: %s is missing; left out of %s", folder.name, uri, output)
                    except OSError as error:
                        if error.errno != errno.ELOOP:
                            raise
                        log.warning("recording %s: %s is a link; left out of %s", folder.name, uri, output)
            listing.append(f"file '{joined.name}'")
        (work / "parts.txt").write_text("\n".join(listing) + "\n")
        temporary = work / output
        result = subprocess.run(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
             "-i", str(work / "parts.txt"), "-map", "0", "-c", "copy", "-movflags", "+faststart", "-f", "mp4",
             str(temporary)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=REMUX_TIMEOUT_SECONDS, check=False)
        if result.returncode != 0 or not temporary.exists():
            message = result.stderr.decode(errors="replace").strip().splitlines()
            return f"ffmpeg remux failed: {message[-1][:200] if message else result.returncode}"
        os.replace(temporary, folder / output)
        return None
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"remux failed: {error}"
    finally:
        remove_tree(work)
