"""The three packages depend one way only: ahgd_daemon -> pipelines -> state."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"state": ("pipelines", "ahgd_daemon"), "pipelines": ("ahgd_daemon",)}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package: str):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, name in _imports(path):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert bad == []


def test_importing_state_loads_nothing_above_it():
    code = ("import sys, state, state.log, state.machine; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pipelines', 'ahgd_daemon')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_name_pipelines_exports_resolves():
    import pipelines

    missing = [n for n in pipelines.__all__ if not hasattr(pipelines, n)]
    assert missing == []
