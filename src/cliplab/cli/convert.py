"""``cliplab convert --model SRC --out DST --to cliplab|openai|hf|open_clip``: lossless
checkpoint conversion."""

from __future__ import annotations

import argparse

from cliplab.checkpoints.api import convert
from cliplab.cli.common import add_model, add_out, add_set, model_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between cliplab, OpenAI, OpenCLIP and Hugging Face formats",
        description=(
            "Read --model in any supported format (OpenAI TorchScript or state dict, OpenCLIP "
            "state dict, training checkpoint or hub directory, Hugging Face CLIPModel directory, "
            "cliplab; or a pretrained name, fetched first) and write it to --out. Weights are "
            "copied unchanged."
        ),
    )
    add_model(
        parser,
        help="checkpoint file or directory, or a pretrained name (cliplab list-models --pretrained)",
    )
    add_out(
        parser,
        help="output: a directory (cliplab, hf, open_clip), a .safetensors file (cliplab) or a "
        ".pt file (openai)",
    )
    parser.add_argument(
        "--to",
        choices=("cliplab", "openai", "hf", "open_clip"),
        default="cliplab",
        help="output format (default: cliplab; open_clip: OpenCLIP's hub folder, "
        "open_clip_config.json + open_clip_model.safetensors)",
    )
    add_set(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = convert(args.model, args.out, to=args.to, **model_settings(args))
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
