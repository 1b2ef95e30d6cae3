"""The WiSE-FT curve: zero-shot accuracy of ``(1 - alpha) A + alpha B`` over alpha, on the
fine-tuning task and under distribution shift, and its plot (task accuracy against the mean
accuracy under shift, one point per alpha, as in Wortsman et al. 2022, figure 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cliplab.checkpoints.merge import MergeInputs, interpolate
from cliplab.data.evalsets import ClassificationSet
from cliplab.evaluation.training import ProtocolEvaluator
from cliplab.transforms import EvalTransform

__all__ = ["curve", "plot_curve"]


def curve(
    inputs: MergeInputs,
    alphas: Sequence[float],
    task: ClassificationSet,
    shifted: Sequence[ClassificationSet] = (),
    *,
    templates: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per alpha: ``{"alpha", "task", "shift" (mean over the shifted sets),
    "sets": {name: top-1}}``."""
    preprocess = EvalTransform(inputs.config.vision.image_size, **inputs.preprocess)
    # one evaluator per set: its images are decoded and preprocessed once, for every alpha
    evaluators = {
        s.name: ProtocolEvaluator(
            "zeroshot",
            {"dataset": s},
            {"templates": templates},
            prefix="",
            batch_size=batch_size,
            transform=preprocess,
        )
        for s in (task, *shifted)
    }
    rows = []
    for step, alpha in enumerate(alphas):
        model = interpolate(inputs, alpha)
        model = model.to(device) if device else model
        scores = {name: ev(model, step)["top1"] for name, ev in evaluators.items()}
        shift = [scores[s.name] for s in shifted]
        row = {
            "alpha": alpha,
            "task": scores[task.name],
            "shift": sum(shift) / len(shift) if shift else None,
            "sets": scores,
        }
        rows.append(row)
        if progress is not None:
            tail = f", under shift {row['shift']:.3f}" if shift else ""
            progress(f"alpha {alpha:g}: {task.name} {row['task']:.3f}{tail}")
    return rows


def plot_curve(
    runs: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "WiSE-FT"
) -> Path:
    """Task accuracy (x) against the mean accuracy under shift (y), one line per run
    (``{label: rows}``), alpha written at each end and at 0.5."""
    from cliplab.evaluation.output import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(5.5, 4.5))
    for label, rows in runs.items():
        rows = [r for r in rows if r.get("shift") is not None]
        if not rows:
            continue
        xs = [100 * r["task"] for r in rows]
        ys = [100 * r["shift"] for r in rows]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(rows, xs, ys, strict=True):
            if r["alpha"] in (0.0, 0.5, 1.0):
                ax.annotate(
                    f"α={r['alpha']:g}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=line.get_color(),
                )
    ax.set_xlabel("zero-shot top-1 on the fine-tuning task (%)")
    ax.set_ylabel("mean top-1 under distribution shift (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
