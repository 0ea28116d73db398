"""Helpers of the browser tests (tests/test_browser_*.py): find Debian's chromium and drive it with Playwright.

No chromium (or no playwright) skips a test with the reason, except when the environment variable CI is set:
there a missing browser fails the test, so CI cannot pass by skipping. `make test` installs chromium when it can.
Playwright never downloads a browser here: it launches the system chromium by path.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def chromium_path() -> str | None:
    """``$CRYOSCAPE_CHROMIUM``, else /usr/bin/chromium, else ``chromium``/``chromium-browser`` on PATH."""
    for candidate in (os.environ.get("CRYOSCAPE_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """The chromium executable; skip (fail under CI) when it or playwright is missing."""
    path = chromium_path()
    problem = None
    if path is None:
        problem = "no chromium found (install Debian's package: apt-get install chromium; `make test` does this)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[test]')"
    if problem:
        if _ci():
            pytest.fail(f"{problem}; browser tests are required when CI is set", pytrace=False)
        pytest.skip(problem)
    return path


@contextlib.contextmanager
def launched_browser():
    """A headless chromium (Playwright ``Browser``), closed on exit."""
    path = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=LAUNCH_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class ConsoleErrors(list):
    """Console messages of type error and uncaught page exceptions of a Playwright page, as strings."""

    def __init__(self, page):
        super().__init__()
        page.on("console", lambda msg: self.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.append(f"pageerror: {exc}"))


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk; fails the test when ``data`` is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
