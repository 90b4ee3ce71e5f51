"""Headless Debian Chromium (Playwright with `executable_path`, no browser download) in a child process
(tests/web/browser_session.py says why), and what the tests ask of a <video>: is it playing, and does a
screenshot of it show a picture."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.web.web_support import CHROMIUM

SESSION = Path(__file__).with_name("browser_session.py")
VIDEO_STATE = """(video) => ({currentTime: video.currentTime, readyState: video.readyState, paused: video.paused,
  duration: video.duration, width: video.videoWidth, height: video.videoHeight,
  audioBytes: video.webkitAudioDecodedByteCount, videoBytes: video.webkitVideoDecodedByteCount,
  src: video.currentSrc, error: video.error && video.error.code})"""


class BrowserError(AssertionError):
    pass


class Browser:
    """One page; each method is one request to the child process (Playwright's own timeouts bound them)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SESSION), str(CHROMIUM)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, start_new_session=True,
        )
        self.version = self._answer()

    def _answer(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise BrowserError(f"the browser session exited ({self.process.wait(timeout=10)})")
        answer = json.loads(line)
        if not answer["ok"]:
            raise BrowserError(answer["error"])
        return answer["result"]

    def call(self, op: str, **request: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **request}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def goto(self, url: str) -> None:
        self.call("goto", url=url)

    def evaluate(self, expression: str, selector: str | None = None, arg: Any = None) -> Any:
        return self.call("evaluate", expression=expression, selector=selector, arg=arg)

    def wait_for(self, expression: str, seconds: float) -> Any:
        """The first truthy value of `expression`, polled (the page's CSP forbids Playwright's own eval-based
        wait); AssertionError after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {seconds} s: {expression} (last: {value!r})")
            time.sleep(0.25)

    def screenshot(self, selector: str, path: Path) -> Path:
        self.call("screenshot", selector=selector, path=str(path))
        return path

    def fill(self, selector: str, value: str) -> None:
        self.call("fill", selector=selector, value=value)

    def click(self, selector: str) -> None:
        self.call("click", selector=selector)

    def errors(self) -> list[str]:
        return list(self.call("errors"))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed: make system-deps")
    browser = Browser()
    try:
        yield browser
    finally:
        browser.close()


def video_state(browser: Browser, selector: str) -> dict[str, Any]:
    return dict(browser.evaluate(VIDEO_STATE, selector))


def wait_until_playing(browser: Browser, selector: str, seconds: float) -> dict[str, Any]:
    """The video's state once it has data to play and its clock has moved; AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = video_state(browser, selector)
        if state["readyState"] >= 3 and state["currentTime"] > 0 and not state["paused"]:
            return state
        time.sleep(0.25)
    raise AssertionError(f"{selector} did not start playing within {seconds} s: {state}")


def advance_over(browser: Browser, selector: str, seconds: float) -> float:
    """How far the video's currentTime moved during `seconds` of wall time."""
    before = video_state(browser, selector)["currentTime"]
    time.sleep(seconds)
    return float(video_state(browser, selector)["currentTime"]) - before


def picture_variance(png: Path) -> float:
    """Variance of the grey levels in the middle of a screenshot (a control bar or border excluded)."""
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(png),
         "-vf", "crop=iw*0.6:ih*0.6,scale=160:90", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        check=True, capture_output=True, timeout=30,
    ).stdout
    assert len(raw) == 160 * 90, len(raw)
    return statistics.pvariance(raw)
