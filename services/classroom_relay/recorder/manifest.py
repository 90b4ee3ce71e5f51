"""manifest.json (docs/recording.md): what the recorder knows of a recording — parts, gaps, state, files —
written atomically (a temporary file renamed over the old one), so a reader or a restarted recorder never
finds half of it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LIVE_STATES = ("recording", "finalizing")
FINAL_STATES = ("finished", "failed", "stopped_disk_full")


def write(folder: Path, manifest: dict[str, Any]) -> None:
    temporary = folder / f".{MANIFEST}.tmp"
    with open(temporary, "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / MANIFEST)


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none or it does not parse (never an exception)."""
    try:
        loaded = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
