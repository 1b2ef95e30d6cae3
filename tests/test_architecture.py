"""The library (``src/cliplab`` minus its application packages) never imports the
applications built on it: the CLI, training and serving layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cliplab"
APPLICATIONS = ("cliplab.cli", "cliplab.train", "cliplab.serve", "cliplab.demo")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
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
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


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
        "cliplab.tokenizer",
        "cliplab.checkpoints.api",
    } <= names


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: module_name(p))
def test_library_never_imports_applications(path: Path) -> None:
    offending = sorted(n for n in imported_modules(path) if is_application(n))
    assert not offending, f"{module_name(path)} imports {offending}"


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
