"""``cliplab finetune FOLDER``: fine-tune a pretrained CLIP on labelled images, the FLYP way
(the contrastive loss of pre-training, class names in prompt templates as captions).

The command holds out a validation split of the folder (10% of each class, by a hash of the
file names: the same split every time), measures zero-shot accuracy on it before training,
trains each candidate learning rate for an equal share of the time budget, and keeps the
candidate with the best validation accuracy: ``OUT/model`` is that fine-tune, and
``OUT/report.md`` / ``OUT/report.json`` give every candidate's validation accuracy before
and after. The test images of a benchmark must not be in FOLDER: choices here are made on
the held-out split only.

The built-in recipe (:data:`RECIPE`) was chosen on a validation split of Fashion-MNIST's
training images with the demo's emoji model (``cliplab demo --recipe finetune``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cliplab.fileio import write_json
from cliplab.train.budget import time_steps
from cliplab.train.config import Config

#: The built-in recipe: AdamW without decay on gains, biases and embeddings, a short linear
#: warm-up then cosine, the training images cached in memory, light crops.
RECIPE: dict[str, Any] = {
    "lrs": (1e-5, 1e-4),
    "weight_decay": 0.1,
    "warmup_fraction": 0.1,
    "batch_size": 256,
    "templates": "imagenet80",
    "val_fraction": 0.1,
    "ema_decay": 0.0,
}
#: Minutes of each candidate's share that go to its start (decoding the images into memory)
#: and its evaluations rather than to steps.
OVERHEAD_MINUTES = 0.4


def base_config(
    folder: str,
    model: str,
    out: Path,
    *,
    lr: float,
    steps: int,
    lock_image: bool = False,
    templates: str = RECIPE["templates"],
    classnames: str = "",
    batch_size: int = RECIPE["batch_size"],
    seed: int = 0,
    device: str = "auto",
    overrides: Sequence[str] = (),
) -> Config:
    """The training config of one candidate (``overrides``: ``--set section.key=value``)."""
    from cliplab.train.config import apply_override

    source = {
        "kind": "classes",
        "path": folder,
        "split": "train",
        "val_fraction": RECIPE["val_fraction"],
        "templates": templates,
        "classnames": classnames,
    }
    d: dict[str, Any] = {
        "output": str(out),
        "model": {"pretrained": model, "lock_image": lock_image},
        "data": {"sources": [source], "batch_size": batch_size, "in_memory": True},
        "optim": {
            "lr": lr,
            "warmup_steps": max(1, int(RECIPE["warmup_fraction"] * steps)),
            "weight_decay": RECIPE["weight_decay"],
            "embedding_decay": False,
        },
        "train": {"steps": steps, "seed": seed, "device": device},
        "checkpoint": {"interval": max(steps, 1), "keep": 1},
        "log": {"interval": 10, "tensorboard": False},
    }
    for item in overrides:
        apply_override(d, item)
    return Config.from_dict(d)


def _val_top1(metrics: dict[str, float]) -> float | None:
    found = [v for k, v in metrics.items() if k.endswith("-val_top1") and not k.startswith("ema_")]
    return found[0] if found else None


def finetune_folder(
    folder: str,
    model: str,
    out: Path,
    *,
    minutes: float = 10.0,
    steps: int = 0,
    lrs: Sequence[float] = RECIPE["lrs"],
    lock_image: bool = False,
    templates: str = RECIPE["templates"],
    classnames: str = "",
    seed: int = 0,
    device: str = "auto",
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``folder`` (see the module docstring); returns the report."""
    from cliplab.train import Trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = RECIPE["batch_size"]

    def config_for(lr: float, n: int) -> Config:
        return base_config(
            folder,
            model,
            out / "runs" / f"lr-{lr:g}",
            lr=lr,
            steps=n,
            lock_image=lock_image,
            templates=templates,
            classnames=classnames,
            batch_size=batch,
            seed=seed,
            device=device,
            overrides=overrides,
        )

    if steps <= 0:  # fit each candidate's share of the budget
        probe = config_for(lrs[0], 1000)
        rate = time_steps(probe.replace(output=str(out / "runs" / "timing")), warmup=2, timed=5)
        shutil.rmtree(out / "runs" / "timing", ignore_errors=True)
        share = max(minutes / len(lrs) - OVERHEAD_MINUTES, 0.1)
        steps = max(10, int(share * 60 * rate / probe.data.batch_size))
        log(f"== {rate:,.0f} pairs/s here: {steps} steps per candidate learning rate")
    candidates = []
    for lr in lrs:
        config = config_for(lr, steps)
        log(f"== learning rate {lr:g}: {steps} steps -> {config.output}")
        started = time.perf_counter()
        summary = Trainer(config).fit()
        if summary.get("status") != "complete":
            raise RuntimeError(f"training stopped: {summary.get('status')}; re-run to resume")
        before, after = summary.get("eval_before", {}), summary.get("eval", {})
        candidates.append(
            {
                "lr": lr,
                "steps": steps,
                "minutes": (time.perf_counter() - started) / 60,
                "val_top1_before": _val_top1(before),
                "val_top1_after": _val_top1(after),
                "run": config.output,
            }
        )
        log(f"   validation top-1 {_val_top1(before)} -> {_val_top1(after)}")
    best = max(candidates, key=lambda c: c["val_top1_after"] or 0.0)
    final = out / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(Path(best["run"]) / "model", final)
    report = {
        "folder": folder,
        "model": model,
        "lock_image": lock_image,
        "recipe": {**RECIPE, "lrs": list(lrs), "templates": templates},
        "candidates": candidates,
        "chosen_lr": best["lr"],
        "val_top1_before": best["val_top1_before"],
        "val_top1_after": best["val_top1_after"],
        "model_dir": str(final),
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render(report), encoding="utf-8")
    return report


def render(report: dict[str, Any]) -> str:
    """The report as Markdown: each candidate's validation accuracy before and after."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = [
        f"# Fine-tuning {report['model']} on {report['folder']}",
        "",
        f"Zero-shot top-1 on the held-out validation split: **{pct(report['val_top1_before'])}%"
        f"** before, **{pct(report['val_top1_after'])}%** after fine-tuning (learning rate "
        f"{report['chosen_lr']:g}, chosen on that split){' with the image tower locked' if report['lock_image'] else ''}.",
        "",
        "| learning rate | steps | minutes | val top-1 before | val top-1 after |",
        "|---|---|---|---|---|",
    ]
    for c in report["candidates"]:
        lines.append(
            f"| {c['lr']:g} | {c['steps']} | {c['minutes']:.1f} | {pct(c['val_top1_before'])} | "
            f"{pct(c['val_top1_after'])} |"
        )
    lines += [
        "",
        f"Model: `{report['model_dir']}`. Settings: `{json.dumps(report['recipe'])}`.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["RECIPE", "base_config", "finetune_folder", "render"]
