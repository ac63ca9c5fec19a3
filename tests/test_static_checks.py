"""ruff and mypy --strict are part of the test suite, so CI and developers run them alike."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    assert shutil.which("ruff") or _run("ruff", "--version").returncode == 0
    result = _run("ruff", "check", "agent", "drivers", "hil", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean_on_agent_and_drivers() -> None:
    result = _run("mypy", "--strict", "agent", "drivers")
    assert result.returncode == 0, result.stdout + result.stderr
