"""The core must stay sans-I/O: no clocks, no event loop, no bus or socket libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).parents[1] / "agent" / "core"
FORBIDDEN = {"time", "asyncio", "can", "pymodbus", "serial", "socket", "threading", "select",
             "selectors", "subprocess", "os"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_sources_import_no_io_module() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 8
    offenders = {p.name: sorted(_imported_roots(p) & FORBIDDEN) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_core_loads_no_io_library() -> None:
    code = (
        "import sys, agent.core.session, agent.core.arbiter, agent.core.states;"
        "print(','.join(sorted(m for m in ('asyncio','can','pymodbus','serial','socket')"
        " if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=CORE.parents[1], check=True)
    assert out.stdout.strip() == ""


def test_the_checker_would_catch_an_io_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom time import monotonic\n")
    assert _imported_roots(bad) & FORBIDDEN == {"asyncio", "time"}
