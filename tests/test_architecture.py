"""The shape of the codebase, checked on its import graph.

- The library (``src/cliplab`` minus its application packages) never imports the
  applications built on it: the CLI, training, serving, the demo and the dataset recipes.
- No import cycles, counting every import (also those inside functions).
- argparse lives in ``cliplab.cli`` only.
- Model files hold architecture only.
- A module over ~500 lines says in its docstring why it is one thing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cliplab"
APPLICATIONS = (
    "cliplab.cli",
    "cliplab.train",
    "cliplab.serve",
    "cliplab.demo",
    "cliplab.recipes",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved; in
    ``from X import Y``, ``X.Y`` when that is a module of the package, else ``X``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                full = f"{prefix}.{alias.name}"
                names.add(full if full in MODULES else prefix)
    return names


def import_graph() -> dict[str, set[str]]:
    """cliplab module -> the cliplab modules it imports (the evaluation registry imports
    its protocol modules by name: those edges are added)."""
    graph = {
        name: {m for m in imported_modules(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    graph["cliplab.evaluation.registry"] |= {
        m for m in MODULES if m.startswith("cliplab.evaluation.protocols.")
    }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def is_application(name: str) -> bool:
    return any(name == app or name.startswith(app + ".") for app in APPLICATIONS)


LIBRARY_FILES = sorted(
    p for p in SRC.rglob("*.py") if not is_application(module_name(p)) and p.name != "__main__.py"
)


def test_library_files_found() -> None:
    names = {module_name(p) for p in LIBRARY_FILES}
    assert {
        "cliplab",
        "cliplab.models.vit",
        "cliplab.tokenizer.fast",
        "cliplab.checkpoints.api",
        "cliplab.encode",
        "cliplab.evaluation.registry",
    } <= names
    assert not names & {"cliplab.recipes.install", "cliplab.cli.evaluate", "cliplab.demo.plan"}


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: module_name(p))
def test_library_never_imports_applications(path: Path) -> None:
    offending = sorted(n for n in imported_modules(path) if is_application(n))
    assert not offending, f"{module_name(path)} imports {offending}"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above would catch the cycle zeroshot <-> evaluation.features had."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_argparse_only_in_the_cli() -> None:
    users = sorted(
        name
        for name, path in MODULES.items()
        if "argparse" in imported_modules(path) and not name.startswith("cliplab.cli")
    )
    assert not users, f"argparse outside cliplab.cli: {users}"


def test_model_files_hold_architecture_only() -> None:
    """Parallelism, checkpointing and compilation are applied from outside the model files."""
    for path in (SRC / "models").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for banned in (
            "torch.distributed",
            "torch.utils.checkpoint",
            "torch.compile",
            "DistributedDataParallel",
        ):
            assert banned not in text, f"{path.name} mentions {banned}"


def test_long_modules_say_why_they_are_one_thing() -> None:
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 520:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert re.search(r"[Ww]hy one module", doc), f"{name}: {text.count(chr(10))} lines"
