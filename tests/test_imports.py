"""The package's import graph is one-way: no cycles, and no imports of mpiland modules hidden inside functions.

A short AST walk over mpiland/: every ``import``/``from ... import`` of an mpiland
module is an edge, wherever it stands (a function-level import still counts, so a
lazy import cannot hide a cycle). Function-level imports of mpiland modules are
allowed only in the command line (which loads torch-heavy commands on demand, so
``mpiland info`` stays quick); optional heavy third-party packages may be imported
anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mpiland"
LAZY_INTERNAL_OK = {"mpiland.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").exists()


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The mpiland modules an import-from names (the module itself, or submodules imported from a package)."""
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("mpiland"):
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() or _is_package(sub):
            out.append(sub)
        else:
            out.append(target)
    return out


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Edges module -> imported mpiland modules, and the function-level internal imports found."""
    graph: dict[str, set[str]] = {}
    lazy: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = graph.setdefault(module, set())
        parents: dict[ast.AST, ast.AST] = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(module, node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("mpiland")]
            else:
                continue
            targets = [t for t in targets if t != module]
            if not targets:
                continue
            scope = parents.get(node)
            in_type_checking = False
            while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if isinstance(scope, ast.If) and "TYPE_CHECKING" in ast.unparse(scope.test):
                    in_type_checking = True
                scope = parents.get(scope)
            if in_type_checking:
                continue
            if scope is not None:
                lazy.append(f"{module}:{node.lineno} imports {', '.join(targets)} inside {scope.name}()")
            edges.update(targets)
    return graph, lazy


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ re-exporting its submodules is not a cycle with them.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_is_acyclic():
    graph, _ = import_graph()
    assert len(graph) > 20
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_function_level_imports_of_mpiland_modules():
    _, lazy = import_graph()
    assert [x for x in lazy if x.split(":")[0] not in LAZY_INTERNAL_OK] == []


def test_a_cycle_is_found():
    """The checker itself: a two-module cycle is reported."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_surface_reader_and_analysis_stay_torch_free():
    """The modules ``mpiland info`` and ``plot`` load never reach torch through mpiland imports."""
    graph, _ = import_graph()
    heavy = {"mpiland.engine", "mpiland.curvature", "mpiland.directions", "mpiland.layout", "mpiland.run"}

    def reach(node: str, seen: set[str]) -> set[str]:
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    for light in ("mpiland", "mpiland.surface.reader", "mpiland.analysis.summary", "mpiland.plots", "mpiland.result",
                  "mpiland.export"):
        bad = {m for m in reach(light, set()) if any(m == h or m.startswith(h + ".") for h in heavy)}
        assert not bad, f"{light} reaches {sorted(bad)}"
