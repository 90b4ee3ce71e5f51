"""Roster files are read away from the accounts service's workers, and imports take turns.

A hostile file must neither grow the accounts process nor delay other tenants' token checks (issue 12,
item 2). So the bounded reader (roster_files.py) runs in a short-lived child process that limits its
own address space and CPU time; at most `IMPORTS_AT_ONCE` imports run and `IMPORTS_WAITING` wait, the
rest are told to retry, so most nameko workers always stay free; and an import lets other requests
run between rows (SQLite and ORM work never yield to eventlet by themselves).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import eventlet
from eventlet.semaphore import Semaphore

from services.accounts.roster_files import MAX_FILE_BYTES
from services.common.config import REPO_ROOT
from services.common.errors import InvalidInput, ServiceUnavailable

# The child process: address space and CPU time it may use, and how long accounts waits for it.
CHILD_MEMORY_BYTES = 512 * 1024 * 1024
CHILD_CPU_SECONDS = 20
CHILD_WALL_SECONDS = 25.0
IMPORTS_AT_ONCE = 2
IMPORTS_WAITING = 2
YIELD_EVERY_ROWS = 5


def read_table_isolated(
    filename: str, content: bytes, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> list[list[str]]:
    """`read_table` in a child process with its own memory and CPU limits; same answers and errors."""
    if len(content) > MAX_FILE_BYTES:  # checked here too: never ship an oversized file to a child
        raise InvalidInput(f"The file is {len(content)} bytes; at most {MAX_FILE_BYTES} are accepted.")
    try:
        done = run(
            [sys.executable, "-m", "services.accounts.roster_files", filename,
             str(CHILD_MEMORY_BYTES), str(CHILD_CPU_SECONDS)],
            input=content, capture_output=True, timeout=CHILD_WALL_SECONDS, check=False, cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired as error:
        raise InvalidInput(f"Reading the file took longer than {CHILD_WALL_SECONDS:.0f} s; split it.") from error
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        # Killed by its limits (MemoryError, SIGXCPU) or crashed: the file is what made it so.
        raise InvalidInput("The file could not be read within the platform's memory and time limits; "
                           "is it really a roster?")
    if "error" in answer:
        raise InvalidInput(str(answer["error"]))
    return answer["rows"]



class ImportSlots:
    """`with slots:` runs at most `running` imports; `waiting` more may queue, the rest get 503."""

    def __init__(self, running: int = IMPORTS_AT_ONCE, waiting: int = IMPORTS_WAITING) -> None:
        self.semaphore = Semaphore(running)
        self.capacity = running + waiting
        self.holders = 0

    def __enter__(self) -> None:
        if self.holders >= self.capacity:
            raise ServiceUnavailable("Other roster imports are running; retry in a few seconds.")
        self.holders += 1
        self.semaphore.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.semaphore.release()
        self.holders -= 1


def yield_to_other_requests(done: int, _total: int) -> None:
    """An import's progress callback: let token checks run between rows."""
    if done % YIELD_EVERY_ROWS == 0:
        eventlet.sleep(0)
