"""manifest.json (docs/recording.md): what the recorder knows of a recording — parts, gaps, state, files —
written atomically (a temporary file renamed over the old one), so a reader or a restarted recorder never
finds half of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.common.storage import write_file

MANIFEST = "manifest.json"
LIVE_STATES = ("recording", "finalizing")
FINAL_STATES = ("finished", "failed", "stopped_disk_full")


def write(folder: Path, manifest: dict[str, Any]) -> None:
    write_file(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def read(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none or it does not parse (never an exception)."""
    try:
        loaded = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
