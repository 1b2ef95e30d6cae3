"""The standard zero-shot benchmarks' class names and prompt templates, bundled.

The CLIP paper's zero-shot table (27 datasets) used class names and templates OpenAI
published with the model (``data/prompts.md`` and the ImageNet notebook of openai/CLIP, MIT
licence); ``assets/datasets.json`` holds them, built by ``scripts/build_dataset_prompts.py``.
Datasets are named as CLIP_benchmark names them (``imagenet1k``, ``cifar10``, ``cars``,
``fgvc_aircraft``...), with the paper's names as aliases (``stanfordcars``, ``flowers102``);
``wds/`` prefixes (CLIP_benchmark's WebDataset names) are ignored.

A set's own files win: an evaluation set that ships its class names or templates keeps
them, and these fill only what is missing (:mod:`cliplab.data.layouts`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = ["BenchmarkInfo", "benchmark", "known_benchmarks", "normalise_name"]


@dataclass(frozen=True)
class BenchmarkInfo:
    """One dataset's bundled class names (in its labels' order), templates and, where the
    paper gave several names for a class (FER2013), the others as members."""

    name: str
    title: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    members: tuple[tuple[str, ...], ...] | None = None


@functools.cache
def _table() -> dict[str, Any]:
    text = resources.files("cliplab").joinpath("assets", "datasets.json").read_text("utf-8")
    return json.loads(text)


@functools.cache
def _aliases() -> dict[str, str]:
    out = {}
    for name, entry in _table()["datasets"].items():
        out[name] = name
        for alias in entry.get("aliases", ()):
            out[normalise_name(alias)] = name
    return out


def normalise_name(name: str) -> str:
    """``"wds/Imagenet-1k"`` -> ``"imagenet-1k"``: lower case, without a ``wds/`` prefix."""
    name = name.strip().lower()
    return name.removeprefix("wds/").removeprefix("wds_")


def known_benchmarks() -> list[str]:
    """The bundled datasets' names."""
    return sorted(_table()["datasets"])


def benchmark(name: str) -> BenchmarkInfo | None:
    """The bundled class names and templates of dataset ``name`` (or an alias), or None."""
    key = _aliases().get(normalise_name(name))
    if key is None:
        return None
    entry = _table()["datasets"][key]
    members = entry.get("members")
    return BenchmarkInfo(
        name=key,
        title=entry["title"],
        classnames=tuple(entry["classnames"]),
        templates=tuple(entry["templates"]),
        members=None if members is None else tuple(tuple(m) for m in members),
    )
