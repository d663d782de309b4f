"""The package's shape: sub-packages in layers, each importing only its own layer and those below,
and no import cycle between modules (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "facemask"
# Lowest first. A module may import its own layer and the layers before it, never one after.
LAYERS = [
    {"facemask", "facemask.config", "facemask.run_folder", "facemask.progress", "facemask.processes"},
    {"facemask.data"},
    {"facemask.runtime"},
    {"facemask.pipeline"},
    {"facemask.evaluation"},
    {"facemask.detection"},
    {"facemask.recipe"},
    {"facemask.training"},
    {"facemask.publish"},
    {"facemask.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    for rank, names in enumerate(LAYERS):
        for name in names:
            if module == name and name == "facemask" or name != "facemask" and (
                    module == name or module.startswith(name + ".")):
                return rank
    raise AssertionError(f"{module} is in no layer: add its sub-package to LAYERS")


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """The package's modules that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "facemask":
            assert node.level == 0, f"{path}: relative import of {node.module}"
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: use absolute imports (from facemask.x.y import z)")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "facemask")
    return found


def graph() -> Dict[str, Set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    cycles = []

    def visit(node: str, stack: list, done: set) -> None:
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            # The package root holds only constants; importing it is not a dependency on its children.
            if nxt != "facemask":
                visit(nxt, stack, done)
        stack.pop()
        done.add(node)

    done: set = set()
    for start in sorted(edges):
        visit(start, [], done)
    assert not cycles, "\n".join(cycles)


def test_every_sub_package_is_in_a_layer_and_none_is_flat():
    for path in PACKAGE.rglob("*.py"):
        layer(module_name(path))
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "processes.py", "progress.py", "run_folder.py"], flat


def test_the_checker_sees_an_upward_and_a_cyclic_import(tmp_path):
    data_module = tmp_path / "facemask" / "data" / "x.py"
    data_module.parent.mkdir(parents=True)
    data_module.write_text("def f():\n    from facemask.publish.card import write_card\n")
    found = imports_of(data_module, {"facemask.publish.card"})
    assert found == {"facemask.publish.card"} and layer("facemask.publish.card") > layer("facemask.data.x")
