"""Builders: installed sources -> training shards and evaluation sets, idempotent and cached.

Each builder module declares a :class:`~cliplab.recipes.builders.common.Builder`: the
packages it reads (names of :data:`cliplab.recipes.install.PACKAGES`), the outputs it makes
(``shards/<name>`` and ``eval/<name>`` under the data directory) and its
``build(sources, out, *, force, log, only)``. Sources are found by
:func:`cliplab.recipes.install.source_path` (``data/sources`` or a system install); each
output directory carries a ``build.json``, and an output whose inputs and builder version did
not change is not rebuilt. ``cliplab data build`` runs them; :func:`plan` says which builders
and packages a set of outputs needs (how the demo installs only what its recipe uses).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cliplab.recipes.builders import (
    emoji,
    emoji_styles,
    fashion_mnist,
    icons,
    openclipart,
    tuxpaint,
)
from cliplab.recipes.builders.common import BUILD_FILE, Builder, MissingExtra, Output, read_build

__all__ = [
    "BUILDERS",
    "BUILD_FILE",
    "Builder",
    "MissingExtra",
    "Output",
    "build",
    "builder_of",
    "plan",
    "shard_urls",
]

#: name -> builder; run in this order by default.
BUILDERS: dict[str, Builder] = {
    b.name: b
    for b in (
        emoji.BUILDER,
        emoji_styles.BUILDER,
        tuxpaint.BUILDER,
        openclipart.BUILDER,
        fashion_mnist.BUILDER,
        icons.BUILDER,
    )
}


def builder_of(output: str) -> Builder:
    """The builder that makes ``output`` (``"shards/<name>"`` or ``"eval/<name>"``)."""
    for b in BUILDERS.values():
        if output in b.outputs:
            return b
    known = sorted(o for b in BUILDERS.values() for o in b.outputs)
    raise ValueError(f"no builder makes {output!r}; known outputs: {', '.join(known)}")


def plan(outputs: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``({builder: [its outputs]}, packages)`` for the outputs a run needs, in order."""
    builders: dict[str, list[str]] = {}
    for output in outputs:
        builders.setdefault(builder_of(output).name, []).append(output)
    packages: list[str] = []
    for name, wanted in builders.items():
        packages += [p for p in BUILDERS[name].packages_for(wanted) if p not in packages]
    return builders, packages


def build(
    names: Sequence[str] | None = None,
    sources: str | Path = "data/sources",
    out: str | Path = "data",
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
    only: Iterable[str] | None = None,
) -> dict[str, list[Output] | str]:
    """Run builders (all by default); a builder whose sources are missing is reported, not fatal.

    ``only`` limits the builders to those outputs. Returns, per builder, its outputs or the
    reason it could not run.
    """
    wanted = set(only) if only is not None else None
    results: dict[str, list[Output] | str] = {}
    for name in names or list(BUILDERS):
        if name not in BUILDERS:
            raise ValueError(f"unknown builder {name!r}; known: {', '.join(BUILDERS)}")
        builder = BUILDERS[name]
        mine = None if wanted is None else wanted & set(builder.outputs)
        if mine is not None and not mine:
            continue
        log(f"{name}:")
        start = time.perf_counter()
        try:
            outputs = builder.build(Path(sources), Path(out), force=force, log=log, only=mine)
        except (FileNotFoundError, MissingExtra) as e:
            log(f"  skipped: {e}")
            results[name] = str(e)
            continue
        for o in outputs:
            log(o.line())
        log(f"  ({time.perf_counter() - start:.1f} s)")
        results[name] = outputs
    return results


def shard_urls(name: str, out: str | Path = "data") -> list[str]:
    """The shard paths of a built shard set, e.g. ``shard_urls("emoji-twitter")``."""
    path = Path(out) / "shards" / name
    info = read_build(path)
    if info is None:
        raise FileNotFoundError(f"no built shard set at {path} (run `cliplab data build`)")
    return [str(path / s) for s in info.get("shards", [])]
