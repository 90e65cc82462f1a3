"""The project's modules import one another without a cycle, and an import inside a function is either of a heavy
third-party module (it saves start-up time) or says why in a one-line `# lazy: <reason>` comment.

Every module under bot/, engine/ and db/ is parsed with ast (nothing is imported), so an import hidden inside a
function counts as an edge of the graph too. Imports under `if TYPE_CHECKING:` never run, so they are left out.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "engine", "db")
# Third-party modules whose import costs seconds or gigabytes: importing them inside a function needs no comment.
HEAVY = {"torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub", "modelscope",
         "numpy", "PIL", "psutil", "tqdm"}
LAZY_MARK = "# lazy:"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (a project module, or the top-level name of a third-party one)
    line: int
    in_function: bool
    commented: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "migrations" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, source: str, modules: dict[str, Path]) -> list[str]:
    """The modules one import statement loads: `from bot import views` loads bot.views, `from bot.x import f` bot.x."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = source.split(".")[: -node.level] if not _is_package(source, modules) else \
            source.split(".")[: len(source.split(".")) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    return found or [base]


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imports_of(source: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    text = path.read_text()
    lines = text.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit_one(orelse, in_function)
                continue
            visit_one(child, in_function)

    def visit_one(child: ast.AST, in_function: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            if isinstance(child, ast.ImportFrom) and child.module == "__future__":
                return
            commented = LAZY_MARK in lines[child.lineno - 1] or \
                (child.lineno >= 2 and lines[child.lineno - 2].strip().startswith(LAZY_MARK))
            for target in _targets(child, source, modules):
                found.append(Import(source, target, child.lineno, in_function, commented))
            return
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        visit(child, inside)

    visit(ast.parse(text, filename=str(path)), False)
    return found


def all_imports() -> list[Import]:
    modules = project_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def project_target(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (its longest known prefix), or None for a third-party one."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for imp in all_imports():
        target = project_target(imp.target, modules)
        # `import bot.x` also runs bot/__init__.py; a package's own __init__ is not an edge worth following
        if target and target != imp.source and not imp.source.startswith(target + "."):
            graph[imp.source].add(target)
    return graph


def test_no_import_cycle_among_project_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_inside_functions_are_heavy_or_say_why():
    modules = project_modules()
    unexplained = [f"{imp.source}:{imp.line} imports {imp.target}" for imp in all_imports()
                   if imp.in_function and not imp.commented and imp.target.split(".")[0] not in HEAVY]
    assert not unexplained, (f"imports inside functions need a one-line '{LAZY_MARK} <reason>' comment "
                             f"(or belong at the top of the module):\n" + "\n".join(unexplained))


def test_the_checker_sees_a_cycle_and_a_hidden_import(tmp_path):
    """The checker itself: a cycle through an import inside a function is found, a type-only import is not one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bot.client\n"
                   "def f():\n    import bot.views\n    import torch\n    import json  # lazy: a test\n")
    found = imports_of("m", src, {"m": src, "bot.views": src, "bot.client": src})
    assert [(i.target, i.in_function, i.commented) for i in found] == [
        ("typing", False, False), ("bot.views", True, False), ("torch", True, False), ("json", True, True)]
