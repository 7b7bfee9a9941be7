"""The shape of the source tree: no import circle between cmkd modules, the core never imports
the benchmark code, and no source file grows past a size one can read in a sitting.

Imports are read with `ast`, so nothing is imported: module-level and function-level imports
count alike (a circle closed inside a function still ties the two modules together).
To extend: add a rule as a test over `GRAPH` (module -> the cmkd modules it imports).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cmkd"
BENCH = "cmkd.bench"
# The one door from the core into the benchmark code: the CLI, through a light module.
BENCH_DOORS = {"cmkd.cli": {"cmkd.bench.commands"}}
# What that module may import at module level (everything heavy waits inside the functions).
LIGHT_IMPORTS = {"cmkd.config"}
MAX_LINES = 500
# Circles outside cmkd.bench that are known and being fixed in the core: each entry turns the
# core test into an expected failure that names it. Remove an entry when its circle is gone.
KNOWN_CORE_CYCLES: list[str] = []


def module_files() -> dict[str, Path]:
    """Every module under src/cmkd by dotted name (a package by its __init__.py)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def _closest_module(name: str) -> str | None:
    """`a.b.c` itself if it is a module, else the nearest package above it that is."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """The dotted names a module imports (relative imports resolved; `from x import y` gives
    x.y where that is a module, else x)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the cmkd modules it imports. Importing a.b.c also runs a and a.b (their
    __init__), but that implicit parent import is no edge: only what the code names is."""
    graph = {}
    for name, path in MODULES.items():
        targets = {_closest_module(n) for n in imported_names(name, path)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


GRAPH = import_graph()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of modules (Tarjan) as one shortest circle through its
    first member, [a, b, ..., a]; the group's other members are named by `_text`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_shortest_circle(graph, min(group), group) for group in sorted(groups, key=min)]


def _shortest_circle(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & group):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no circle through {start}")  # unreachable for a Tarjan group


def _text(circle: list[str]) -> str:
    """The circle, and the rest of its group (modules on other circles through it)."""
    group = {v for v in GRAPH if circle[0] in _reachable(v) and v in _reachable(circle[0])}
    rest = sorted(group - set(circle))
    return " -> ".join(circle) + (f" (same knot: {', '.join(rest)})" if rest else "")


def _reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for w in GRAPH.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _in_bench(module: str) -> bool:
    return module == BENCH or module.startswith(BENCH + ".")


def test_the_checker_finds_circles_through_function_level_and_relative_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    pkg = tmp_path / "pkg.py"
    pkg.write_text("def f():\n    from .grid import x\n    import cmkd.io\n")
    names = imported_names("cmkd.bench.pkg", pkg)
    assert names == {"cmkd.bench.grid", "cmkd.io"}


def test_no_import_circle_in_bench() -> None:
    found = [c for c in cycles(GRAPH) if any(map(_in_bench, c))]
    assert not found, "import circles: " + "; ".join(map(_text, found))


@pytest.mark.xfail(
    bool(KNOWN_CORE_CYCLES),
    reason="known core import circle(s), being fixed in the core: " + "; ".join(KNOWN_CORE_CYCLES),
    strict=True,
)
def test_no_import_circle_in_the_core() -> None:
    found = [c for c in cycles(GRAPH) if not any(map(_in_bench, c))]
    assert not found, "import circles: " + "; ".join(map(_text, found))


def test_the_core_never_imports_the_benchmarks() -> None:
    bad = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not _in_bench(module)
        for target in sorted(targets)
        if _in_bench(target) and target not in BENCH_DOORS.get(module, set())
    ]
    assert not bad, "; ".join(bad)


def test_the_bench_commands_module_is_light() -> None:
    """`cmkd --help` and every core command import it: torch, Lightning and the benchmark
    modules wait inside its functions."""
    for door in set().union(*BENCH_DOORS.values()):
        names = imported_names(door, MODULES[door], top_level_only=True)
        heavy = {
            n
            for n in names
            if n.split(".")[0] not in sys.stdlib_module_names and n not in LIGHT_IMPORTS
        }
        assert not heavy, f"{door} imports {sorted(heavy)} at module level"


def test_no_source_file_over_the_limit() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in sorted(SRC.rglob("*"))
        # pip's build metadata (src/cmkd.egg-info) sits beside the package in CI.
        if p.is_file()
        and "__pycache__" not in p.parts
        and not p.parts[len(SRC.parts)].endswith(".egg-info")
        for n in [len(p.read_bytes().splitlines())]
        if n > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"
