"""Embedding speed side by side: images/s and texts/s of cliplab on every runtime (torch
fp32, bf16, int8, ONNX Runtime fp32 and int8) against OpenCLIP and transformers' CLIPModel
on the same architecture and inputs, in one run; with ``--demo-model`` also each runtime's
zero-shot top-1 on the demo's evaluation sets against float32.

    python benchmarks/bench_inference.py                  # ViT-B/32 and the demo architecture
    python benchmarks/bench_inference.py --demo-model runs/demo/train/model --data data

Writes ``benchmarks/results/inference.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    ROOT,
    machine,
    model_config,
    open_clip_model,
    rate,
    refs,
    sample_inputs,
    table,
    write,
)

import cliplab  # noqa: E402
from cliplab.demo.plan import ZEROSHOT_SETS  # noqa: E402
from cliplab.runtime import accelerate  # noqa: E402

RUNTIMES = ("torch", "bf16", "bf16-compile", "int8", "onnx", "onnx-int8")
BATCH = {"demo": 256, "ViT-B-32": 32}


def hf_model(config: cliplab.CLIPConfig) -> Any:
    from cliplab.checkpoints import hf

    tf = refs.transformers()
    return tf.CLIPModel(tf.CLIPConfig(**hf.config_to_hf(config))).eval()


def _features(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def speed(
    name: str, repeat: int, cache: Path, runtimes: tuple[str, ...] = RUNTIMES
) -> list[dict[str, Any]]:
    config = model_config(name)
    n = BATCH.get(name, 32)
    images, tokens = sample_inputs(config, n)
    torch.manual_seed(0)
    model = refs.perturb_(cliplab.CLIP(config), seed=0).eval()
    with torch.no_grad():
        ref_images, ref_texts = model.encode_image(images), model.encode_text(tokens)
    print(f"== {name}: batch {n}", flush=True)
    rows: list[dict[str, Any]] = []

    def add(impl: str, runtime: str, encode_image, encode_text, features=None) -> None:
        with torch.no_grad():
            row = {
                "model": name,
                "impl": impl,
                "runtime": runtime,
                "images_per_s": rate(lambda: encode_image(images), n, repeat, warmup=2),
                "texts_per_s": rate(lambda: encode_text(tokens), n, repeat, warmup=2),
            }
            if features is not None:
                got_i, got_t = features
                row["image_cosine"] = float(F.cosine_similarity(got_i, ref_images).min())
                row["text_cosine"] = float(F.cosine_similarity(got_t, ref_texts).min())
        rows.append(row)
        print(
            f"  {impl:12s} {runtime:10s} {row['images_per_s']:9.1f} images/s {row['texts_per_s']:9.1f} texts/s",
            flush=True,
        )

    oc = open_clip_model(config).eval()
    add("openclip", "fp32", oc.encode_image, oc.encode_text)

    def oc_bf16(fn):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x)

        return run

    if "bf16" in runtimes:  # OpenCLIP's fast path beside ours
        add("openclip", "bf16", oc_bf16(oc.encode_image), oc_bf16(oc.encode_text))
    tf = hf_model(config)
    add(
        "transformers",
        "fp32",
        lambda x: _features(tf.get_image_features(pixel_values=x)),
        lambda t: _features(tf.get_text_features(input_ids=t)),
    )
    for runtime in runtimes:
        fast = accelerate(model, runtime, cache_dir=cache)
        with torch.no_grad():
            feats = (fast.encode_image(images), fast.encode_text(tokens))
        add("cliplab", runtime, fast.encode_image, fast.encode_text, feats)
    from cliplab.runtime import auto_runtime

    choice = auto_runtime(model, cache_dir=cache)  # measured by auto itself, same run
    timed = {r["runtime"]: r["images_per_s"] for r in rows if r["impl"] == "cliplab"}
    fastest = max(timed, key=timed.__getitem__) if timed else None
    print(f"  auto picks {choice}; the fastest timed here: {fastest}", flush=True)
    for r in rows:
        r["auto_choice"] = choice if r["impl"] == "cliplab" else None
    base = {
        k: next(r for r in rows if r["impl"] == "openclip" and r["runtime"] == "fp32")[k]
        for k in ("images_per_s", "texts_per_s")
    }
    for r in rows:
        r["images_vs_openclip_fp32"] = r["images_per_s"] / base["images_per_s"]
        r["texts_vs_openclip_fp32"] = r["texts_per_s"] / base["texts_per_s"]
    return rows


def accuracy(model_dir: Path, data: Path, cache: Path) -> list[dict[str, Any]]:
    """Zero-shot top-1 of the demo model on each runtime, on the demo's held-out sets."""
    from cliplab.demo.evaluate import load_sets
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.registry import get

    model, preprocess = cliplab.load(model_dir)
    sets = tuple(ZEROSHOT_SETS)
    runs = load_sets(data, [("zeroshot", {"dataset": s}, None) for s in sets])
    rows = []
    for runtime in RUNTIMES:
        store = FeatureStore(
            accelerate(model, runtime, cache_dir=cache), preprocess, batch_size=256, progress=False
        )
        row: dict[str, Any] = {"runtime": runtime}
        for protocol, values, _ in runs:
            result = get(protocol)(store, get(protocol).make_options({}), **values)
            row[values["dataset"].name] = 100 * result.top1
        rows.append(row)
        print(
            "  "
            + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else str(v) for k, v in row.items()),
            flush=True,
        )
    torch_row = rows[0]
    for row in rows:
        row["max_delta_points"] = max(abs(row[s] - torch_row[s]) for s in sets)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="ViT-B-32,demo")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--name", default="inference", help="results file: benchmarks/results/NAME.json")
    p.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help="cliplab runtimes to time (bf16 ones crawl on CPUs without bf16 instructions)",
    )
    p.add_argument("--demo-model", type=Path, help="a trained demo model, for accuracy")
    p.add_argument("--data", type=Path, default=ROOT / "data")
    args = p.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.models.split(","):
            rows += speed(name, args.repeat, Path(cache), tuple(args.runtimes.split(",")))
        print(
            table(
                rows,
                [
                    "model",
                    "impl",
                    "runtime",
                    "images_per_s",
                    "images_vs_openclip_fp32",
                    "texts_per_s",
                    "texts_vs_openclip_fp32",
                    "image_cosine",
                    "text_cosine",
                ],
            )
        )
        payload: dict[str, Any] = {"machine": machine(), "batch": BATCH, "rows": rows}
        if args.demo_model:
            payload["accuracy"] = accuracy(args.demo_model, args.data, Path(cache))
            sets = list(ZEROSHOT_SETS)
            print(table(payload["accuracy"], ["runtime", *sets, "max_delta_points"]))
    print(f"wrote {write(f'{args.name}.json', payload)}")


if __name__ == "__main__":
    main()
