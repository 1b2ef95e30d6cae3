"""``cliplab list-models``: the presets with their sizes; ``--pretrained``: the weights cliplab
fetches by name, with their size, source and zero-shot ImageNet top-1."""

from __future__ import annotations

import argparse
import json

import torch

from cliplab.config import ViTConfig
from cliplab.models import CLIP
from cliplab.presets import PRESETS


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


def print_table(columns: list[tuple[str, str]], rows: list[list[str]]) -> None:
    """A plain-text table: ``columns`` are (title, "<" or ">"), each as wide as it needs."""
    widths = [max([len(t), *(len(r[i]) for r in rows)]) for i, (t, _) in enumerate(columns)]
    line = "  ".join(f"{t:{a}{w}}" for (t, a), w in zip(columns, widths))
    print(line.rstrip())
    print("-" * len(line))
    for r in rows:
        print("  ".join(f"{c:{a}{w}}" for c, (_, a), w in zip(r, columns, widths)).rstrip())


def run_pretrained(args: argparse.Namespace) -> int:
    rows = pretrained_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cells = []
    for r in rows:
        size = "?"
        if r["bytes"]:
            size = f"{'' if r['size_stated'] else '~'}{r['bytes'] / 1e6:,.0f} MB"
        cells.append(
            [
                r["name"],
                f"{r['params_m']:,.0f}M" if r["params_m"] else "?",
                size,
                f"{100 * r['imagenet_top1']:.1f}" if r["imagenet_top1"] else "?",
                r["layout"],
                "yes" if r["cached"] else "",
            ]
        )
    columns = [("name", "<"), ("params", ">"), ("download", ">"), ("top-1", ">")]
    print_table([*columns, ("layout", "<"), ("cached", "<")], cells)
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
    keys = ("name", "vision", "image_size", "text", "embed_dim")
    cells = [[str(r[k]) for k in keys] + [f"{r['parameters']:,}"] for r in rows]
    columns = [("name", "<"), ("image tower", "<"), ("size", ">"), ("text", "<")]
    print_table([*columns, ("embed", ">"), ("params", ">")], cells)
    return 0
