"""The package's import graph follows the layer map of docs/DESIGN.md: no circle, no import against the order.

Every import counts, at module level or inside a function. A module may import
modules of its own layer or of the layers below it; within a layer the graph
must still have no circle. ``hasten/__init__.py`` (lazy public names) and
``hasten/__main__.py`` stand above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: bottom to top; a module belongs to the first entry that is it or one of its packages
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors and options", ("hasten.errors", "hasten.options", "hasten.checks", "hasten.jsonable")),
    ("grid, denoise, guidance and steps", (
        "hasten.devices", "hasten.grid", "hasten.noise", "hasten.parameterisation", "hasten.denoise", "hasten.guidance",
        "hasten.steps", "hasten.multistep", "hasten.inpaint", "hasten.rounds", "hasten.stopping")),
    ("methods and caches", ("hasten.methods", "hasten.caches")),
    ("executors", ("hasten.executors",)),
    ("engine", ("hasten.engine",)),
    ("models and integrations", ("hasten.models", "hasten.integrations", "hasten.testing")),
    ("run description and session", ("hasten.spec", "hasten.config", "hasten.opening", "hasten.session")),
    ("api and accelerate", ("hasten.api", "hasten.accelerated")),
    ("reports", ("hasten.report", "hasten.metrics", "hasten.output", "hasten.mp4")),
    ("bench and tune", ("hasten.bench", "hasten.tune", "hasten.demo")),
    ("serve", ("hasten.serve",)),
    ("cli", ("hasten.cli",)),
]
#: pairs in one layer that must not import each other in this direction (embedded models know no pipeline)
FORBIDDEN = [("hasten.models", "hasten.integrations"), ("hasten.integrations", "hasten.models")]
TOP = ("hasten", "hasten.__main__")


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in (SRC / "hasten").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, package) in mods.items():
        base = name.split(".") if package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                stem = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = ([stem] if node.module or not node.level else []) + [f"{stem}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def layer_of(module: str) -> int | None:
    if module in TOP:
        return None
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py; add it where it belongs")


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_no_import_against_the_layer_order():
    wrong = []
    for module, targets in imports().items():
        mine = layer_of(module)
        if mine is None:
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
            for low, high in FORBIDDEN:
                if (module == low or module.startswith(low + ".")) and (target == high or target.startswith(high + ".")):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layer map:\n" + "\n".join(wrong)


def test_no_import_circle():
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize("folder", sorted({p.parent for p in (SRC / "hasten").rglob("__init__.py")}))
def test_every_folder_says_what_lives_there(folder):
    tree = ast.parse((folder / "__init__.py").read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(doc.split()) >= 5, f"{folder.relative_to(SRC)}/__init__.py needs a docstring saying what lives there"


def test_no_file_over_400_lines():
    long = [f"{p.relative_to(SRC)} ({n} lines)" for p in (SRC / "hasten").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "files over 400 lines: " + ", ".join(long)
