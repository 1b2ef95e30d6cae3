"""``cliplab list-models``: the presets with their sizes."""

from __future__ import annotations

import argparse
import json

import torch

from cliplab.config import PRESETS, ViTConfig
from cliplab.models import CLIP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list-models", help="list the model presets")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def describe(name: str) -> dict:
    config = PRESETS[name]
    with torch.device("meta"):
        params = CLIP(config).num_parameters()
    v, t = config.vision, config.text
    vision = (
        f"ViT {v.width}w x{v.layers} /{v.patch_size}"
        if isinstance(v, ViTConfig)
        else f"ResNet {v.width}w {list(v.layers)}"
    )
    return {
        "name": name,
        "vision": vision,
        "image_size": v.image_size,
        "text": f"{t.width}w x{t.layers}",
        "embed_dim": config.embed_dim,
        "parameters": params,
    }


def run(args: argparse.Namespace) -> int:
    rows = [describe(name) for name in PRESETS]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'name':<14}{'image tower':<30}{'size':>6}  {'text':<10}{'embed':>6}{'params':>14}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:<14}{r['vision']:<30}{r['image_size']:>6}  {r['text']:<10}{r['embed_dim']:>6}{r['parameters']:>14,}"
        )
    return 0
