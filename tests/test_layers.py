"""The three packages depend one way only (ahgd_daemon -> pipelines -> state), and no
module imports itself back through others: the import graph has no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"state": ("pipelines", "ahgd_daemon"), "pipelines": ("ahgd_daemon",)}


PACKAGES = ("state", "pipelines", "ahgd_daemon")


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


# --------------------------------------------------------------------------- cycles


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports, counting every import statement: at the
    top, inside functions (lazy) and under ``if TYPE_CHECKING:``.  ``from pkg import name``
    counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = node.module if not node.level else (
                    f"{base}.{node.module}" if node.module else base)
                for a in node.names:
                    target = f"{source}.{a.name}"
                    found = target if target in files else known(source)
                    if found:
                        deps.add(found)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_a_cycle_is_found_even_through_a_lazy_or_type_checking_import(tmp_path):
    """The check itself: a deliberate cycle in a copy of the import structure fails it."""
    pkg = tmp_path / "pipelines"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    from ..a import x\n")
    (pkg / "d.py").write_text("from pipelines.sub import c\n")     # imports into it, no cycle
    graph = import_graph(tmp_path, ("pipelines",))
    assert cycles(graph) == [["pipelines.a", "pipelines.b", "pipelines.sub.c"]]
    (pkg / "sub" / "c.py").write_text("")
    assert cycles(import_graph(tmp_path, ("pipelines",))) == []
