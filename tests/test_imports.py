"""The package's modules import one another without a circle: every `import` and `from ... import` of
every module under ssl/sslstudy (those inside functions too, relative ones resolved) is an edge of one
graph, and that graph has no cycle."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import sslstudy

PACKAGE = Path(sslstudy.__file__).parent


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its file. `from a import b` is an
    edge to a.b where that is a module, else to a; imports from outside the package are left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = ".".join(p for p in (base, node.module) if p)
            else:
                base = node.module
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


@functools.cache
def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (its modules in import order, the first repeated at the end) per group of modules that
    import one another (strongly connected components, Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, group) for group in groups]


def _one_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path inside `group` from its first module back to itself."""
    start = min(group)
    paths, seen = [[start]], set()
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & group):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def test_the_graph_holds_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert {"sslstudy.train", "sslstudy.eval.features", "sslstudy.methods"} <= graph.keys()
    assert "sslstudy.methods" in graph["sslstudy.train"]  # from .methods import build_method
    assert "sslstudy.methods.base" in graph["sslstudy.train"]  # from .methods.base import Batch
    assert "sslstudy.names" in graph["sslstudy.train"]  # from . import names: the submodule
    assert "sslstudy.train" in graph["sslstudy.launch"]  # imported inside a function
    assert "sslstudy.errors" in graph["sslstudy.methods"]  # from ..errors in a package's __init__.py


def test_the_fork_server_imports_nothing_of_the_command_layer():
    """forkserver runs the command it is given by name; the report reads its CPU line from cpu_line."""
    graph = import_graph()
    assert graph["sslstudy.forkserver"] == {"sslstudy.cpu_line"}
    assert "sslstudy.forkserver" not in graph["sslstudy.report.tables"]


def test_cycles_finds_each_circle_once():
    graph = dict(a={"b"}, b={"c"}, c={"a", "d"}, d=set(), e={"f"}, f={"e"}, g={"a"})
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles(dict(a={"b"}, b=set())) == []


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)
