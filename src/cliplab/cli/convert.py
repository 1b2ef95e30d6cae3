"""``cliplab convert SRC DST --to hf|openai|cliplab``: lossless checkpoint conversion."""

from __future__ import annotations

import argparse

from cliplab.checkpoints.api import convert
from cliplab.cli.overrides import add_set_argument, parse_overrides


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between cliplab, OpenAI/OpenCLIP and Hugging Face formats",
        description=(
            "Read SRC in any supported format (OpenAI TorchScript or state dict, OpenCLIP state dict, "
            "training checkpoint or hub directory, Hugging Face CLIPModel directory, cliplab) and write DST. "
            "Weights are copied unchanged."
        ),
    )
    parser.add_argument(
        "src", help="checkpoint file or directory, or an OpenAI model name found in the local cache"
    )
    parser.add_argument(
        "dst",
        help="output: a directory (cliplab, hf), a .safetensors file (cliplab) or a .pt file (openai)",
    )
    parser.add_argument(
        "--to",
        choices=("cliplab", "openai", "hf"),
        default="cliplab",
        help="output format (default: cliplab)",
    )
    add_set_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = convert(args.src, args.dst, to=args.to, **parse_overrides(args.overrides))
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
