"""Builders: installed sources -> training shards and evaluation sets, idempotent and cached.

Each builder module has ``build(sources, out, *, force, log) -> list[Output]``. Sources are
found by :func:`cliplab.data.install.source_path` (``data/sources`` or a system install);
outputs go to ``<out>/shards/<name>/`` and ``<out>/eval/<name>/`` with a ``build.json`` each,
and an output whose inputs and builder version did not change is not rebuilt.

    python -m cliplab.data.builders --sources data/sources --out data emoji tuxpaint
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cliplab.data.builders import emoji, fashion_mnist, icons, openclipart, tuxpaint
from cliplab.data.builders.common import BUILD_FILE, MissingExtra, Output, read_build

__all__ = ["BUILDERS", "BUILD_FILE", "MissingExtra", "Output", "build", "main", "shard_urls"]

#: name -> build function; run in this order by default.
BUILDERS: dict[str, Callable[..., list[Output]]] = {
    "emoji": emoji.build,
    "tuxpaint": tuxpaint.build,
    "openclipart": openclipart.build,
    "fashion-mnist": fashion_mnist.build,
    "icons": icons.build,
}


def build(
    names: Sequence[str] | None = None,
    sources: str | Path = "data/sources",
    out: str | Path = "data",
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, list[Output] | str]:
    """Run builders (all by default); a builder whose sources are missing is reported, not fatal.

    Returns, per builder, its outputs or the reason it could not run.
    """
    results: dict[str, list[Output] | str] = {}
    for name in names or list(BUILDERS):
        if name not in BUILDERS:
            raise ValueError(f"unknown builder {name!r}; known: {', '.join(BUILDERS)}")
        log(f"{name}:")
        start = time.perf_counter()
        try:
            outputs = BUILDERS[name](Path(sources), Path(out), force=force, log=log)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs="*",
        metavar="BUILDER",
        help=f"builders to run ({', '.join(BUILDERS)}); default all",
    )
    parser.add_argument(
        "--sources", default="data/sources", help="installed sources (default data/sources)"
    )
    parser.add_argument("--out", default="data", help="where shards/ and eval/ go (default data)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="also write a summary JSON here"
    )


def run(args: argparse.Namespace) -> int:
    results = build(args.names or None, args.sources, args.out, force=args.force)
    if args.json:
        summary = {
            k: (v if isinstance(v, str) else [o.__dict__ for o in v]) for k, v in results.items()
        }
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    skipped = [k for k, v in results.items() if isinstance(v, str)]
    if skipped and args.names:
        print(
            f"not built: {', '.join(skipped)} (sources missing: `cliplab data install`)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cliplab.data.builders",
        description="Build shards and evaluation sets from installed sources.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
