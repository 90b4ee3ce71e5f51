"""Where recordings live (docs/recording.md): one folder per recording key under a root.

The recorder writes through it, the resources service deletes through it (retention). `Storage` is the
interface; `FilesystemStorage` is the real default (`var/recordings` under `make run`, a
PersistentVolumeClaim in Kubernetes). Every path is checked to stay inside the root: a key is
`services.common.playback_urls.KEY_PATTERN` and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.common.playback_urls import KEY_PATTERN


class BadKey(ValueError):
    """A recording key that is not `[a-z0-9-]{1,64}`."""


@dataclass(frozen=True)
class Usage:
    free_bytes: int
    total_bytes: int


class Storage(Protocol):
    def folder(self, key: str) -> Path: ...
    def list_keys(self) -> list[str]: ...
    def usage_bytes(self, key: str) -> int: ...
    def usage(self) -> Usage: ...
    def delete(self, key: str) -> bool: ...


def check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise BadKey(f"recording key {key!r} must match {KEY_PATTERN.pattern}")
    return key


class FilesystemStorage:
    """Recordings as folders `<root>/<key>/` on a local (or mounted) filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, key: str) -> Path:
        path = self.root / check_key(key)
        # KEY_PATTERN has no "/" or "..", but a symlink planted under the root could still point outside it.
        if path.is_symlink() or path.resolve().parent != self.root:
            raise BadKey(f"recording folder {key!r} is not a plain folder inside {self.root}")
        return path

    def list_keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir()
                      if entry.is_dir() and not entry.is_symlink() and KEY_PATTERN.fullmatch(entry.name))

    def usage_bytes(self, key: str) -> int:
        total = 0
        for directory, _folders, files in os.walk(self.folder(key)):
            for name in files:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_size
                except FileNotFoundError:  # a live window's segment deleted meanwhile
                    continue
        return total

    def usage(self) -> Usage:
        """Free (for an unprivileged writer) and total bytes of the filesystem holding the root."""
        probe = self.root if self.root.exists() else self.root.parent
        stats = os.statvfs(probe)
        return Usage(free_bytes=stats.f_bavail * stats.f_frsize, total_bytes=stats.f_blocks * stats.f_frsize)

    def delete(self, key: str) -> bool:
        """Remove a recording's folder; False when there was none. Never follows a link out of the root."""
        path = self.folder(key)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True


# Inside a recording's folder the recorder only ever makes plain files and folders; a symlink found there was
# planted (by whatever else can write the volume). These two never follow one, so nothing is written or
# removed outside the root through it.

def write_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (readers see the old file or the new one, never half of it);
    a link at `path` or at its temporary name is replaced, never written through."""
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a leftover, or a planted link: O_EXCL below refuses both
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def remove_tree(path: Path) -> None:
    """Remove a folder and what is in it, or just the link when `path` is one; nothing there is fine."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    shutil.rmtree(path, ignore_errors=True)  # rmtree itself removes links inside without following them
