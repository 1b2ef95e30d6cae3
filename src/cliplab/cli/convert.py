"""``cliplab convert --model SRC --out DST --to hf|openai|cliplab``: lossless checkpoint
conversion."""

from __future__ import annotations

import argparse

from cliplab.checkpoints.api import convert
from cliplab.cli.common import add_model, add_out, add_set, model_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between cliplab, OpenAI/OpenCLIP and Hugging Face formats",
        description=(
            "Read --model in any supported format (OpenAI TorchScript or state dict, OpenCLIP "
            "state dict, training checkpoint or hub directory, Hugging Face CLIPModel directory, "
            "cliplab) and write it to --out. Weights are copied unchanged."
        ),
    )
    add_model(
        parser,
        help="checkpoint file or directory, or an OpenAI model name found in the local cache",
    )
    add_out(
        parser,
        help="output: a directory (cliplab, hf), a .safetensors file (cliplab) or a .pt file (openai)",
    )
    parser.add_argument(
        "--to",
        choices=("cliplab", "openai", "hf"),
        default="cliplab",
        help="output format (default: cliplab)",
    )
    add_set(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = convert(args.model, args.out, to=args.to, **model_settings(args))
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
