"""Where recordings live: the storage interface and its filesystem backend (docs/recording.md).

Minimal version for the resources service's retention (delete a recording's folder); the recorder's
side of the interface (writing, free space) joins it here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from services.common.playback_urls import KEY_PATTERN


class FilesystemStorage:
    """Recordings under one root folder, one folder per recording key (`<root>/rec-42/...`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not KEY_PATTERN.match(key):
            raise ValueError(f"recording key {key!r} must match {KEY_PATTERN.pattern}")
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> bool:
        """Remove a recording's files; False when there were none (deleting twice is not an error)."""
        folder = self.path(key)
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True
