"""Debian's chromium, headless (`.ci/deps` installs it): the real browser the page tests use."""

from __future__ import annotations

import shutil
import subprocess


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: run .ci/deps"
    return found


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=90)
