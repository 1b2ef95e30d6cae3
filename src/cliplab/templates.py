"""Prompt templates: how a class name becomes the texts a zero-shot classifier embeds.

A template holds one ``{}`` where the class name goes ("a photo of a {}."). Template sets
are JSON files under ``cliplab/assets/templates`` (``load_templates("photo")``) or any JSON
file: a list of strings, or an object with a ``"templates"`` list (as the evaluation sets'
``templates.json``).
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PLACEHOLDER",
    "check_templates",
    "fill_template",
    "list_templates",
    "load_templates",
    "resolve_templates",
]

#: Where a template puts the class name.
PLACEHOLDER = "{}"


def _template_files() -> dict[str, Any]:
    root = importlib.resources.files("cliplab").joinpath("assets", "templates")
    return {p.name[: -len(".json")]: p for p in root.iterdir() if p.name.endswith(".json")}


def list_templates() -> list[str]:
    """Names of the bundled template sets (``bare``, ``photo``, ``imagenet80``, ...)."""
    return sorted(_template_files())


def check_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    """``templates`` as a list, or ``ValueError`` unless each has exactly one ``{}``."""
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError(f"{source}: templates must be a non-empty list of strings")
    for t in templates:
        if not isinstance(t, str) or t.count(PLACEHOLDER) != 1:
            raise ValueError(f"{source}: each template needs exactly one '{{}}', got {t!r}")
    return list(templates)


def load_templates(name_or_path: str | os.PathLike[str]) -> list[str]:
    """A template set: a bundled name (see :func:`list_templates`) or a JSON file's path."""
    files = _template_files()
    key = str(name_or_path)
    if key in files:
        data = json.loads(files[key].read_text(encoding="utf-8"))
        source = f"template set {key!r}"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"no template set {key!r}: not a bundled name ({', '.join(sorted(files))}) "
                "nor a JSON file"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a JSON template set ({e})") from None
        source = str(path)
    if isinstance(data, dict):
        data = data.get("templates")
    return check_templates(data, source)


def resolve_templates(
    spec: str | Sequence[str] | None, own: Sequence[str] | None = None
) -> list[str]:
    """Templates from a spec: None or ``"dataset"`` -> ``own`` (a set's templates; ``photo``
    when it has none); a bundled name or JSON path -> that file; a list -> itself."""
    if spec is None or spec == "dataset":
        return list(own) if own else load_templates("photo")
    if isinstance(spec, str):
        return load_templates(spec)
    return check_templates(spec)


def fill_template(template: str, classname: str) -> str:
    """``template`` with its ``{}`` replaced by ``classname`` (no ``str.format``: names may
    hold braces)."""
    return template.replace(PLACEHOLDER, classname)
