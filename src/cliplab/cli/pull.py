"""``cliplab pull NAME... [--to DIR]``: fetch pretrained weights ahead of time, verified, into
the cache or into a folder to carry to a machine without a connection."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cliplab.checkpoints.fetch import cache_root, fetch
from cliplab.checkpoints.registry import resolve_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="fetch pretrained weights by name into the cache (or a folder to carry offline)",
        description=(
            "Fetch and verify the weights of each NAME (ARCH/TAG, an OpenAI name, hf-hub:ORG/REPO "
            "or a Hugging Face repository id: cliplab list-models --pretrained) into the cache "
            "(CLIPLAB_CACHE, else ~/.cache/cliplab). With --to DIR they go to DIR instead, laid "
            "out as a cache: on the offline machine, set CLIPLAB_CACHE=DIR and CLIPLAB_OFFLINE=1."
        ),
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="pretrained names")
    parser.add_argument("--to", type=Path, help="a folder to fetch into instead of the cache")
    parser.add_argument("--quiet", action="store_true", help="no progress")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = args.to.expanduser() if args.to else cache_root()
    for name in args.names:
        entry = resolve_name(name).entry
        if entry is None:
            raise ValueError(f"{name!r} is a local path already; nothing to pull")
        path = fetch(entry, root=root, progress=not args.quiet)
        size = sum(
            f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file()
        )
        print(f"{entry.name}: {path} ({size / 1e6:,.1f} MB)")
    if args.to:
        print(
            f"on the machine without a connection: export CLIPLAB_CACHE={os.fspath(root)} CLIPLAB_OFFLINE=1"
        )
    return 0
