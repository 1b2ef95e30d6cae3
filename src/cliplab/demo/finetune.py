"""``cliplab demo --recipe finetune`` (``make finetune-demo``): fine-tune the demo's emoji model
on Fashion-MNIST's training images, the FLYP way (class names in prompts as captions) and
with the image tower locked, two seeds each; report zero-shot accuracy on Fashion-MNIST's
test set and on three emoji styles the fine-tune never saw (Google, Apple, Facebook: the
distribution shift), before, after, and along the WiSE-FT curve
``(1 - alpha) zero-shot + alpha fine-tuned``.

Choices (the learning rate, the steps) were made on the validation split that
:mod:`cliplab.train.labelled` holds out of the training images (10% of each class), never
on the test set: see ``docs/results/finetune``. The runs are fitted to the time left
before ``deadline``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from cliplab.checkpoints.merge import read_pair
from cliplab.data.evalsets import load_classification
from cliplab.demo.plan import Log
from cliplab.evaluation.wiseft import curve, plot_curve
from cliplab.fileio import write_json

TASK = "fashion-mnist-test"
SHIFTED = ("emoji-google", "emoji-apple", "emoji-facebook")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SEEDS = (0, 1)
VARIANTS = {"FLYP": False, "locked image": True}  # name -> lock_image
#: Learning rates, chosen per variant on the held-out validation split of the training images
#: (150 steps of 256, seed 0; docs/results/finetune): FLYP 3e-5 / 1e-4 / 3e-4 / 1e-3 gave
#: 50.9 / 69.3 / 74.7 / 76.7% validation top-1 (14.7% before); the locked image tower
#: 3e-4 / 1e-3 / 3e-3 gave 65.2 / 66.5 / 67.4%.
LR = {"FLYP": 1e-3, "locked image": 3e-3}
TEMPLATES = "fashion"
FOLDER = "folders/fashion-mnist-train-20k"
#: Training images per class written to the folder (the first of each class, by index): 20,000
#: in all, of which the fine-tune holds 10% out for validation; about two passes over them fit.
PER_CLASS = 2000
#: Seconds kept back at the end (the report, the plot).
MARGIN_SECONDS = 30
#: The most steps a run takes however fast the machine (about 5 passes over the 18,000
#: training images at batch 256).
MAX_STEPS = 350


def class_folder(data_dir: Path, log: Log = print) -> Path:
    """The first :data:`PER_CLASS` training images of each Fashion-MNIST class as a class
    folder (``<class>/<index>.png``), written once from the Debian package's IDX files."""
    from PIL import Image

    from cliplab.fileio import AtomicDirectory
    from cliplab.recipes.builders.fashion_mnist import CLASSES, load_split
    from cliplab.recipes.install import source_path

    path = data_dir / FOLDER
    if (path / "done.json").is_file():
        return path
    root = source_path("dataset-fashion-mnist", data_dir / "sources")
    log(f"== writing {path} ({PER_CLASS} Fashion-MNIST training images per class)")
    images, labels = load_split(Path(root), "train")
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicDirectory(path) as tmp:
        for name in CLASSES:
            (tmp / name).mkdir(parents=True)
        written = dict.fromkeys(range(len(CLASSES)), 0)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            if written[int(label)] < PER_CLASS:
                Image.fromarray(image).save(tmp / CLASSES[int(label)] / f"{i:05d}.png")
                written[int(label)] += 1
        write_json(tmp / "done.json", {"images": sum(written.values()), "per_class": PER_CLASS})
    return path


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (max(values) - min(values)) / 2 if len(values) > 1 else 0.0


def run_finetune_demo(
    data_dir: str | Path,
    out_dir: str | Path,
    model: str | Path,
    *,
    deadline: float | None = None,
    steps: int = 0,
    seeds: tuple[int, ...] = SEEDS,
    log: Log = print,
) -> dict[str, Any]:
    """Run the fine-tuning demo (see the module docstring); returns the summary written to
    ``OUT/summary.json`` beside ``OUT/report.md`` and ``OUT/wise-ft.png``."""
    from cliplab.train import Trainer
    from cliplab.train.budget import time_steps
    from cliplab.train.labelled import base_config

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    started = time.time()
    folder = class_folder(data_dir, log)
    task = load_classification(data_dir / "eval" / TASK)
    shifted = [load_classification(data_dir / "eval" / name) for name in SHIFTED]

    log("== zero-shot (alpha 0: the model before fine-tuning)")
    t0 = time.perf_counter()
    zero = curve(read_pair(model, model), [0.0], task, shifted, progress=log)
    eval_seconds = time.perf_counter() - t0  # one point of a curve

    runs = [(variant, seed) for seed in seeds for variant in VARIANTS]

    def config_for(variant: str, seed: int, n: int) -> Any:
        return base_config(
            str(folder),
            str(model),
            out_dir / f"{variant.replace(' ', '-')}-seed{seed}",
            lr=LR[variant],
            steps=n,
            lock_image=VARIANTS[variant],
            templates=TEMPLATES,
            seed=seed,
        )

    if steps <= 0:
        rate = time_steps(config_for("FLYP", 0, 1000).replace(output=str(out_dir / "timing")),
                          warmup=2, timed=5)  # fmt: skip
        left = (deadline or started + 15 * 60) - time.time() - MARGIN_SECONDS
        per_run = left / len(runs) - eval_seconds * (len(ALPHAS) - 1) - 25  # 25 s: its start
        steps = min(MAX_STEPS, max(20, int(per_run * rate / 256) // 10 * 10))
        log(f"== {rate:,.0f} pairs/s here: {steps} steps per run ({len(runs)} runs)")
    results: dict[str, list[list[dict[str, Any]]]] = {variant: [] for variant in VARIANTS}
    runs_out = []
    for variant, seed in runs:
        config = config_for(variant, seed, steps)
        log(f"== {variant}, seed {seed}: {steps} steps -> {config.output}")
        summary = Trainer(config).fit()
        if summary.get("status") != "complete":
            raise RuntimeError(f"training stopped: {summary.get('status')}; re-run to resume")
        pair = read_pair(model, Path(config.output) / "model")
        rows = zero + curve(pair, ALPHAS[1:], task, shifted, progress=log)
        results[variant].append(rows)
        val = {k: v for k, v in summary.get("eval", {}).items() if k.endswith("top1")}
        runs_out.append({"variant": variant, "seed": seed, "run": config.output, "val": val})

    table = []
    for variant, per_seed in results.items():
        for i, alpha in enumerate(ALPHAS):
            entry: dict[str, Any] = {"variant": variant, "alpha": alpha}
            for key in ("task", "shift"):
                entry[key], entry[f"{key}_spread"] = _mean_spread([r[i][key] for r in per_seed])
            for name in (TASK, *SHIFTED):
                entry[name] = statistics.fmean(r[i]["sets"][name] for r in per_seed)
            table.append(entry)
    mean_rows = {
        variant: [
            {"alpha": e["alpha"], "task": e["task"], "shift": e["shift"]}
            for e in table
            if e["variant"] == variant
        ]
        for variant in VARIANTS
    }
    plot = plot_curve(
        mean_rows,
        out_dir / "wise-ft.png",
        f"WiSE-FT: {TASK} vs emoji styles (mean of {len(seeds)} seeds)",
    )
    result = {
        "model": str(model),
        "lr": LR,
        "steps": steps,
        "seeds": list(seeds),
        "table": table,
        "runs": runs_out,
        "minutes": (time.time() - started) / 60,
        "plot": str(plot),
    }
    write_json(out_dir / "summary.json", result)
    (out_dir / "report.md").write_text(render(result), encoding="utf-8")
    return result


def render(result: dict[str, Any]) -> str:
    """The report: zero-shot top-1 (%) per alpha, mean and half-range over the seeds."""

    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    lines = [
        "# Fine-tuning the demo model on Fashion-MNIST (FLYP, locked image tower, WiSE-FT)",
        "",
        f"Model `{result['model']}`, learning rates {result['lr']}, {result['steps']} steps of "
        f"256 per run, seeds {result['seeds']}; {result['minutes']:.1f} min in all. Zero-shot "
        f"top-1 (%), mean ± half the range over the seeds. alpha 0 is the model before "
        "fine-tuning, 1 the fine-tune; between, (1 - alpha) zero-shot + alpha fine-tuned.",
        "",
        f"| variant | alpha | {TASK} | {' | '.join(SHIFTED)} | shift mean |",
        "|---|---|---|" + "---|" * len(SHIFTED) + "---|",
    ]
    for e in result["table"]:
        shifted = " | ".join(pct(e[name]) for name in SHIFTED)
        lines.append(
            f"| {e['variant']} | {e['alpha']:g} | {pct(e['task'])} ± {pct(e['task_spread'])} | "
            f"{shifted} | {pct(e['shift'])} ± {pct(e['shift_spread'])} |"
        )
    lines += ["", "![WiSE-FT](wise-ft.png)", ""]
    return "\n".join(lines)
