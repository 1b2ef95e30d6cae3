"""``cliplab export --model M --to onnx [--int8] --out DIR``: both towers as ONNX models for
ONNX Runtime, checked against the torch model before the command returns.

The directory holds ``image.onnx`` (pixels (B, 3, S, S) -> features), ``text.onnx`` (token
ids (B, L) -> features; trim the padding after the last EOT before calling, as
``cliplab.runtime.OnnxCLIP`` does) and ``onnx.json`` (config, fingerprint, logit scale).
``--int8`` quantises the weights of every matrix multiply (ONNX Runtime's dynamic int8).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cliplab.cli.common import add_model, add_out, add_set, load_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model for ONNX Runtime (float32 or int8)",
        description=__doc__.split("\n\n")[0],
    )
    add_model(parser)
    add_out(parser, help="output directory")
    parser.add_argument("--to", choices=("onnx",), default="onnx", help="target (onnx)")
    parser.add_argument("--int8", action="store_true", help="int8 dynamic quantisation")
    add_set(parser)
    parser.set_defaults(run=run, device=None)


def parity(model: torch.nn.Module, directory: str, samples: int = 8) -> dict[str, float]:
    """Worst relative error and lowest cosine of the export's features against the torch
    model's, on seeded random images and a few real captions."""
    from cliplab.runtime import OnnxCLIP
    from cliplab.tokenizer import tokenize

    onnx = OnnxCLIP(directory)
    g = torch.Generator().manual_seed(0)
    size = model.image_size
    images = torch.randn(samples, 3, size, size, generator=g)
    captions = ["a photo of a dog", "a red car parked on a street at night", "", "émoji 🙂"]
    tokens = tokenize(captions, context_length=model.context_length)
    out = {}
    with torch.no_grad():
        for name, ours, ref in (
            ("image", onnx.encode_image(images), model.encode_image(images)),
            ("text", onnx.encode_text(tokens), model.encode_text(tokens)),
        ):
            rel = (ours - ref).norm(dim=-1) / ref.norm(dim=-1)
            out[f"{name}_max_rel_error"] = float(rel.max())
            out[f"{name}_min_cosine"] = float(F.cosine_similarity(ours, ref).min())
    return out


def run(args: argparse.Namespace) -> int:
    from cliplab.runtime import export_onnx

    model, _ = load_model(args)
    model.eval()
    out = export_onnx(model, args.out, int8=args.int8)
    kind = "int8" if args.int8 else "float32"
    print(f"wrote {kind} ONNX models of {args.model} to {out}")
    check = parity(model, str(out))
    print(
        "against torch: image max relative error {image_max_rel_error:.2e}, min cosine "
        "{image_min_cosine:.6f}; text {text_max_rel_error:.2e}, {text_min_cosine:.6f}".format(
            **check
        )
    )
    return 0
