"""The side-by-side table of ``make bench``: the headline ratios from
``benchmarks/results/{inference,train,tokenizer}.json`` against the speed targets.

    python benchmarks/summary.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def pick(rows: list[dict], **match: str) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def main() -> None:
    lines: list[tuple[str, str, str, str]] = []
    inference = load("inference.json")
    if inference:
        rows = inference["rows"]
        for model in ("ViT-B-32", "demo"):
            oc = pick(rows, model=model, impl="openclip", runtime="fp32")
            if not oc:
                continue
            for runtime in ("torch", "bf16", "bf16-compile", "onnx-int8"):
                r = pick(rows, model=model, impl="cliplab", runtime=runtime)
                if r:
                    target = (
                        ">= 4x (fast path)" if model == "ViT-B-32" and runtime != "torch" else ""
                    )
                    lines.append(
                        (
                            f"{model} image embedding, cliplab {runtime}",
                            f"{r['images_per_s']:,.1f}/s",
                            f"{r['images_per_s'] / oc['images_per_s']:.2f}x OpenCLIP fp32",
                            target,
                        )
                    )
            r = pick(rows, model=model, impl="cliplab", runtime="bf16")
            if r:
                lines.append(
                    (
                        f"{model} text embedding, cliplab bf16",
                        f"{r['texts_per_s']:,.0f}/s",
                        f"{r['texts_per_s'] / oc['texts_per_s']:.2f}x OpenCLIP fp32",
                        "",
                    )
                )
        for a in inference.get("accuracy", []):
            lines.append(
                (
                    f"demo zero-shot, {a['runtime']} vs fp32",
                    "",
                    f"max {a['max_delta_points']:.2f} points",
                    "within 1 point",
                )
            )
    train = load("train.json")
    if train:
        for r in train["rows"]:
            if r["impl"] != "cliplab":
                continue
            lines.append(
                (
                    f"{r['model']} training step, cliplab {r['mode']}",
                    f"{r['samples_per_s']:,.1f}/s",
                    f"{r['vs_openclip_fp32']:.2f}x OpenCLIP fp32, {r['vs_openclip_same_precision']:.2f}x same precision",
                    ">= 2x fp32, >= 1.3x same precision" if r["mode"] in ("fp32", "bf16") else "",
                )
            )
    tokenizer = load("tokenizer.json")
    if tokenizer:
        lines.append(
            (
                "tokenizer, cliplab",
                f"{tokenizer['cliplab_texts_per_s']:,.0f}/s",
                f"{tokenizer['speedup']:.1f}x OpenAI",
                "",
            )
        )
        for name, peer in tokenizer.get("peers", {}).items():
            lines.append(
                (
                    f"tokenizer vs {name}",
                    f"{peer['texts_per_s']:,.0f}/s",
                    f"cliplab {peer['cliplab_speedup']:.1f}x",
                    f"{peer['rows_equal_to_openai']:.1%} rows = OpenAI",
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(4)] if lines else [0] * 4
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))
    if not lines:
        print("no results yet: run make bench")


if __name__ == "__main__":
    main()
