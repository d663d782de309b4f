"""The package's shape: sub-packages in layers, each importing only its own layer and those below,
and no import cycle between modules (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "facemask"
# Lowest first. A module may import its own layer and the layers before it, never one after.
LAYERS = [
    {"facemask", "facemask.config", "facemask.run_folder", "facemask.progress", "facemask.processes", "facemask.web"},
    {"facemask.data"},
    {"facemask.runtime"},
    {"facemask.detection"},
    {"facemask.pipeline"},
    {"facemask.evaluation"},
    {"facemask.curation"},
    {"facemask.recipe"},
    {"facemask.publish"},
    {"facemask.training"},
    # Command modules (<sub-package>/cli.py): a subcommand's parser and body where they assemble
    # modules from layers above their own concern's (predict: the runtime, the model loader of
    # evaluation/, detection's face check). Only __main__.py's table imports them.
    {"facemask.*.cli"},
    {"facemask.__main__"},
]
# Package data, not modules: the templates the package fills in (the endpoint's handler.py among them).
DATA = [PACKAGE / "templates", PACKAGE / "configs"]


def modules() -> List[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if not any(d in p.parents for d in DATA))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    if module.startswith("facemask.") and module.endswith(".cli"):
        return next(rank for rank, names in enumerate(LAYERS) if "facemask.*.cli" in names)
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
    paths = {module_name(p): p for p in modules()}
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
    for path in modules():
        layer(module_name(path))
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "processes.py", "progress.py", "run_folder.py", "web.py"], flat


def test_the_checker_sees_an_upward_and_a_cyclic_import(tmp_path):
    data_module = tmp_path / "facemask" / "data" / "x.py"
    data_module.parent.mkdir(parents=True)
    data_module.write_text("def f():\n    from facemask.publish.card import write_card\n")
    found = imports_of(data_module, {"facemask.publish.card"})
    assert found == {"facemask.publish.card"} and layer("facemask.publish.card") > layer("facemask.data.x")


def test_only_the_table_of_subcommands_imports_a_command_module():
    importers = sorted(f"{a} imports {b}" for a, targets in graph().items() for b in targets
                       if b.endswith(".cli") and not a.endswith(".cli") and a != "facemask.__main__")
    assert not importers, importers


def test_the_table_names_every_command_module_and_each_has_add_arguments_and_command():
    from facemask.__main__ import COMMANDS, owner

    modules = {m.split(":")[0] for m, _ in COMMANDS.values()}
    assert {module_name(p) for p in PACKAGE.rglob("cli.py")} <= modules
    for name in COMMANDS:
        assert callable(owner(name).add_arguments) and callable(owner(name).command), name


def paths_out_of_the_package(path: Path) -> List[str]:
    """Where `path` builds a path to a file beside the package rather than in it: the repository's
    root (REPO), `.parent.parent` or `.parents[n]` walking up, `os.path.dirname` twice, `..` joined
    on, or a module loaded by file path. What the package reads is package data (facemask.PACKAGE,
    CONFIGS, TEMPLATES, REQUIREMENTS), so an installed wheel finds it from any folder."""
    found = []

    def dotdot(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and (
            node.value == ".." or node.value.startswith("../"))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name) and node.id == "REPO":
            found.append(f"{path}:{line}: REPO")
        elif isinstance(node, ast.Attribute) and node.attr == "parent" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parent":
            found.append(f"{path}:{line}: .parent.parent")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
            found.append(f"{path}:{line}: .parents[...]")
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name == "spec_from_file_location":
                found.append(f"{path}:{line}: spec_from_file_location")
            if name == "dirname" and any(isinstance(a, ast.Call) and getattr(a.func, "attr", getattr(a.func, "id", ""))
                                         == "dirname" for a in node.args):
                found.append(f"{path}:{line}: dirname(dirname(...))")
            if any(dotdot(a) for a in node.args):
                found.append(f"{path}:{line}: '..' joined")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and (dotdot(node.left) or dotdot(node.right)):
            found.append(f"{path}:{line}: / '..'")
    return found


def test_no_module_reaches_a_file_beside_the_package_by_path():
    reached = [hit for path in modules() for hit in paths_out_of_the_package(path)]
    assert not reached, "\n".join(reached)


def test_the_path_checker_sees_each_way_out(tmp_path):
    module = tmp_path / "x.py"
    module.write_text("import importlib.util, os\nfrom pathlib import Path\n"
                      "a = REPO / 'model_cards'\n"
                      "b = Path(__file__).resolve().parent.parent / 'space_template'\n"
                      "c = Path(__file__).parents[1] / 'configs'\n"
                      "d = os.path.dirname(os.path.dirname(__file__))\n"
                      "e = Path(__file__).parent / '..' / 'requirements.txt'\n"
                      "f = os.path.join(d, '../train.py')\n"
                      "g = importlib.util.spec_from_file_location('pretrain', 'pretrain.py')\n"
                      "ok = Path(__file__).resolve().parent / 'weights'\n")
    found = [hit.split(": ", 1)[1] for hit in paths_out_of_the_package(module)]
    assert found.count("REPO") == 1 and ".parent.parent" in found and ".parents[...]" in found
    assert "dirname(dirname(...))" in found and "/ '..'" in found and "'..' joined" in found
    assert "spec_from_file_location" in found
    assert not [hit for hit in paths_out_of_the_package(module) if ":10:" in hit]  # one level: still the package


def test_what_the_package_reads_at_run_time_is_in_it():
    """The files read at run time, resolved from the package (package data in a wheel)."""
    import facemask
    from facemask.detection.detectors import WEIGHTS_DIR
    from facemask.publish.endpoint import TEMPLATE as HANDLER_TEMPLATE
    from facemask.publish.space import SPACE_TEMPLATES

    read = [facemask.CONFIGS / "quickstart.yaml", facemask.CARD_TEMPLATES / "template.md.j2",
            facemask.CARD_TEMPLATES / "pretraining.md.j2", facemask.CARD_TEMPLATES / "repeat.md.j2",
            facemask.CARD_TEMPLATES / "data_audit.md.j2", facemask.CARD_TEMPLATES / "architectures" / "default.md.j2",
            SPACE_TEMPLATES / "app.py.j2", HANDLER_TEMPLATE, facemask.REQUIREMENTS, WEIGHTS_DIR]
    for path in read:
        assert path.exists() and PACKAGE.resolve() in path.resolve().parents, path
