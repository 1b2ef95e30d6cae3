"""The ``cliplab`` command line. Each subcommand lives in its own module with
``add_parser(subparsers)`` and ``run(args) -> int``; ``main(argv)`` dispatches.

The library (everything outside ``cliplab.cli`` and the application packages) never
imports this package.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cliplab import __version__
from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.fetch import FetchError
from cliplab.cli import (
    classify,
    convert,
    data,
    dedup,
    demo,
    evaluate,
    export,
    finetune,
    merge,
    models,
    pull,
    search,
    serve,
    train,
)

COMMANDS = (
    models,
    pull,
    convert,
    export,
    merge,
    data,
    train,
    finetune,
    evaluate,
    classify,
    search,
    dedup,
    serve,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cliplab", description="CLIP models: train, convert, evaluate, classify."
    )
    parser.add_argument("--version", action="version", version=f"cliplab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def _show_library_logs() -> None:
    """The library's INFO messages (data epochs and their skipped samples, in-memory loading)
    on stderr, unless the application configured logging itself."""
    logger = logging.getLogger("cliplab")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 weights that could not be fetched,
    2 bad input)."""
    args = build_parser().parse_args(argv)
    _show_library_logs()
    from cliplab.runtime import reuse_freed_memory

    reuse_freed_memory()  # batch after batch of the same large activations: no page faults
    try:
        return int(args.run(args) or 0)
    except FetchError as e:  # the network or a server, not the user's input
        print(f"cliplab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"cliplab {args.command}: error: {e}", file=sys.stderr)
        return 2
