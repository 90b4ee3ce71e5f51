"""One headless Chromium page driven over stdin/stdout, one JSON request and one JSON answer a line.

The tests run it as a child process (tests/web/browser_support.py) because the test process is
monkey-patched by eventlet (tests/conftest.py), under which Playwright's sync API never returns from
stopping its driver; here nothing is patched. Debian's chromium, never a downloaded browser.
Playwright rather than selenium + chromedriver: one pinned pip package that drives the installed chromium
(no chromedriver whose version must match it), and it evaluates script in the page and screenshots one
element directly.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from playwright.sync_api import Page, sync_playwright


def run(page: Page, errors: list[str], request: dict[str, Any]) -> Any:
    op = request["op"]
    target = page.locator(request["selector"]).first if request.get("selector") else None
    if op == "goto":
        page.goto(request["url"])
    elif op == "evaluate":
        return (target or page).evaluate(request["expression"], request.get("arg"))
    elif op == "screenshot" and target is not None:
        target.screenshot(path=request["path"])
    elif op == "fill" and target is not None:
        target.fill(request["value"])
    elif op == "click" and target is not None:
        target.click()
    elif op == "errors":
        return list(errors)
    else:
        raise ValueError(f"unknown request {op!r}")
    return None


def main() -> None:
    with sync_playwright() as playwright:
        # No autoplay flag: the page must start muted video by itself, as it does for an inspector.
        browser = playwright.chromium.launch(executable_path=sys.argv[1], headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        print(json.dumps({"ok": True, "result": browser.version}), flush=True)
        for line in sys.stdin:
            try:
                answer = {"ok": True, "result": run(page, errors, json.loads(line))}
            except Exception as error:  # every failure goes back to the test as text
                answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            print(json.dumps(answer), flush=True)
        browser.close()


if __name__ == "__main__":
    main()
