"""The demo's report: the summary table (chance beside every figure), plots (accuracy per set,
test images with their top predictions) and ``report.md``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cliplab.evaluation.output import markdown_table, pyplot, save_figure
from cliplab.evaluation.protocol import Result
from cliplab.fileio import write_text


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    def pct(x: Any) -> str:
        return "-" if x is None else f"{100 * float(x):.1f}%"

    headers = ["set", "what it tests", "protocol", "metric", "cliplab", "chance"]
    body = [
        [r["set"], r["test"], r["protocol"], r["metric"], pct(r["value"]), pct(r["chance"])]
        for r in rows
    ]
    if markdown:
        return markdown_table(headers, body)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
        + [fmt.format(*row) for row in body]
    )


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Bars: each zero-shot/probe figure with its chance level marked."""
    plt = pyplot()
    chosen = [r for r in rows if r["metric"] in ("top-1", "top-5", "R@5")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(chosen) + 2), 4.0))
    xs = range(len(chosen))
    ax.bar(xs, [100 * r["value"] for r in chosen], color="#4c72b0", label="cliplab demo model")
    for x, r in zip(xs, chosen, strict=True):
        if r["chance"] is not None:
            ax.hlines(100 * r["chance"], x - 0.4, x + 0.4, colors="#c44e52", lw=2)
        ax.text(x, 100 * r["value"] + 1, f"{100 * r['value']:.1f}", ha="center", fontsize=7)
    ax.plot([], [], color="#c44e52", lw=2, label="chance")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(
        [f"{r['set']}\n{r['protocol']} {r['metric']}" for r in chosen],
        rotation=45,
        ha="right",
        fontsize=7,
    )
    ax.set_ylabel("%")
    ax.set_title("Accuracy per held-out set (red: chance)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_predictions(
    store: Any,
    sets: Sequence[Any],
    path: Path,
    per_set: int = 6,
    top: int = 3,
    seed: int = 0,
) -> Path:
    """A grid of test images (``per_set`` from each set) with their top zero-shot predictions
    (green: the right class)."""
    from cliplab.evaluation.protocols.zeroshot import zero_shot_features

    plt = pyplot()
    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(
        len(sets), per_set, figsize=(2.3 * per_set, 2.6 * len(sets)), squeeze=False
    )
    for row, dataset in zip(axes, sets, strict=True):
        picks = torch.randperm(len(dataset), generator=g)[:per_set].tolist()
        logits, _ = zero_shot_features(store, dataset, None, store.dataset(dataset)[picks])
        probs = logits.float().softmax(-1)
        for ax, i, p in zip(row, picks, probs, strict=False):
            ax.imshow(dataset.image(i))
            ax.set_xticks([])
            ax.set_yticks([])
            values, idx = p.topk(min(top, p.numel()))
            truth = dataset.labels[i]
            lines = []
            for v, c in zip(values.tolist(), idx.tolist(), strict=True):
                name = dataset.classnames[c]
                lines.append((f"{name[:22]} {100 * v:.0f}%", c == truth))
            for k, (text, ok) in enumerate(lines):
                ax.text(
                    0.0,
                    -0.08 - 0.13 * k,
                    text,
                    transform=ax.transAxes,
                    fontsize=7,
                    color="#2a9d3a" if ok else "#333333",
                    fontweight="bold" if ok else "normal",
                    va="top",
                )
            ax.set_title(f"{dataset.classnames[truth][:24]}", fontsize=8)
        row[0].set_ylabel(dataset.name, fontsize=8)
    fig.suptitle(
        "Zero-shot predictions on held-out sets (title: truth; green: correct)", fontsize=10
    )
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(
    out: Path,
    rows: Sequence[dict[str, Any]],
    results: Sequence[Result],
    plots: dict[str, str],
    meta: dict[str, Any],
) -> Path:
    lines = [
        "# cliplab demo",
        "",
        f"{meta.get('date', '')} on {meta.get('machine', '')}: a {meta.get('parameters', '')} "
        f"parameter CLIP trained from scratch for {meta.get('steps', '')} steps "
        f"({meta.get('train_minutes', 0):.1f} min, {meta.get('samples_seen', 0):,} image-text pairs seen) "
        f"on {', '.join(meta.get('training_data') or ['?'])}. "
        "Everything below is measured on data never trained on.",
        "",
        "## Summary",
        "",
        format_table(rows, markdown=True),
        "",
        "Chance: 1 / classes for top-1 (k / classes for top-k); for retrieval, k / candidates.",
        "",
    ]
    for key, title in (
        ("curves", "Training curves"),
        ("accuracy", "Accuracy per set"),
        ("fewshot", "Zero-shot against k-shot linear probes (Fashion-MNIST)"),
        ("predictions", "Test images and their top predictions"),
    ):
        if key in plots:
            lines += [f"## {title}", "", f"![{title}]({plots[key]})", ""]
    lines += ["## Details", ""]
    for r in results:
        lines += [r.markdown(), ""]
    lines += [
        "## Run",
        "",
        "```",
        json.dumps(meta, indent=1, default=str),
        "```",
        "",
        "Reproduce: `make demo` (or `cliplab demo`). The model: "
        f'`cliplab classify IMAGE --model {meta.get("model", "runs/demo/model")} --labels "cat,dog"`.',
        "",
    ]
    return write_text(out / "report.md", "\n".join(lines))


def machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def chance_note(rows: Sequence[dict[str, Any]]) -> str:
    """How far above chance the headline figures are (for the console)."""
    parts = []
    for r in rows:
        if r["protocol"] == "zero-shot" and r["metric"] == "top-1" and r["chance"]:
            parts.append(f"{r['set']}: {r['value'] / r['chance']:.0f}x chance")
    return ", ".join(parts)
