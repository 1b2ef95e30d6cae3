"""``cliplab list-models``: the presets with their sizes; ``--pretrained``: the weights cliplab
fetches by name, with their size, source and zero-shot ImageNet top-1."""

from __future__ import annotations

import argparse
import json

import torch

from cliplab.config import PRESETS, ViTConfig
from cliplab.models import CLIP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list-models", help="list the model presets, or (--pretrained) the weights by name"
    )
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="the pretrained weights cliplab fetches by name (and CLIPLAB_REGISTRY's)",
    )
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


def pretrained_rows() -> list[dict]:
    """One row per registry entry: name, source, size (stated or estimated), top-1, cached."""
    from cliplab.checkpoints.fetch import find_local
    from cliplab.checkpoints.registry import registry

    rows = []
    for name, e in registry().items():
        size = e.download_bytes()
        rows.append(
            {
                "name": name,
                "source": e.url if e.source == "url" else f"hf:{e.repo}",
                "layout": e.layout,
                "bytes": size,
                "size_stated": bool(e.size),
                "params_m": e.params_m,
                "imagenet_top1": e.imagenet_top1,
                "top1_source": e.top1_source,
                "license": e.license,
                "cached": find_local(e) is not None,
            }
        )
    return rows


def run_pretrained(args: argparse.Namespace) -> int:
    rows = pretrained_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'name':<52}{'params':>9}{'download':>11}{'top-1':>7}  {'layout':<13}cached"
    print(header)
    print("-" * len(header))
    for r in rows:
        params = f"{r['params_m']:,.0f}M" if r["params_m"] else "?"
        size = "?"
        if r["bytes"]:
            size = f"{'' if r['size_stated'] else '~'}{r['bytes'] / 1e6:,.0f} MB"
        top1 = f"{100 * r['imagenet_top1']:.1f}" if r["imagenet_top1"] else "?"
        cached = "yes" if r["cached"] else ""
        print(f"{r['name']:<52}{params:>9}{size:>11}{top1:>7}  {r['layout']:<13}{cached}")
    print(
        "top-1: zero-shot ImageNet-1k as its publisher reports it (--json says where); "
        "~: estimated from the parameters"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pretrained:
        return run_pretrained(args)
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
