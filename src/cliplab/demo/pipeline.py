"""``cliplab demo``: install real sources, build shards, train a small CLIP on CPU, evaluate.

Steps (each shows progress; each is cached or resumable, so a re-run is cheap):

1. **sources**: the npm and Debian packages the demo needs (Twitter and Google emoji,
   emojibase labels, Tux Paint stamps, Fashion-MNIST, and whatever the recipe's shard sets
   are built from), unpacked into ``data/sources`` (:mod:`cliplab.data.install`);
2. **shards and evaluation sets** (:mod:`cliplab.data.builders`);
3. **training** with :class:`cliplab.train.Trainer` from the recipe in ``recipe.toml`` (next
   to this file): the Twitter emoji style (with its skin-tone variants) held in memory
   (decoded once, cropped and colour-jittered in batches), captions drawn afresh every epoch;
   zero-shot accuracy on the Google style is tracked during training;
4. **evaluation** of the final model (:mod:`cliplab.evaluation`): zero-shot with prompt
   ensembling on Google-style emoji (an unseen drawing style), Tux Paint photos of emoji
   concepts (an unseen domain) and Fashion-MNIST (an unseen task); a linear probe and the
   few-shot curve on Fashion-MNIST; retrieval on the Tux Paint photo descriptions;
5. **report**: ``runs/demo/report.md`` with the summary table (chance beside every figure),
   training curves, accuracy per set, zero-shot vs k-shot and a grid of test images with
   their top predictions; ``runs/demo/train/model`` works with ``cliplab classify``.

The Google emoji style and all Tux Paint photos are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib
import torch

from cliplab.evaluation.report import _pyplot, markdown_table

Log = Callable[[str], None]

#: Each builder and the packages (names of :data:`cliplab.data.install.PACKAGES`) it reads.
BUILDER_PACKAGES: dict[str, tuple[str, ...]] = {
    "emoji": ("emoji-datasource-twitter", "emoji-datasource-google", "emojibase-data"),
    "tuxpaint": ("tuxpaint-stamps-default",),
    "openclipart": ("openclipart-png", "openclipart-svg"),
    "icons": ("oxygen-icon-theme", "adwaita-icon-theme", "papirus-icon-theme"),
    "fashion-mnist": ("dataset-fashion-mnist",),
}
#: The builders every demo needs for its evaluation sets (Google emoji, Tux Paint photos,
#: Fashion-MNIST test); the recipe's shard sets may add more.
EVAL_BUILDERS = ("emoji", "tuxpaint", "fashion-mnist")
#: Which builder makes a shard set.
SHARD_BUILDERS = {
    "emoji-twitter": "emoji",
    "emoji-twitter-skins": "emoji",
    "tuxpaint-cartoons": "tuxpaint",
    "tuxpaint-symbols": "tuxpaint",
    "openclipart": "openclipart",
    "icons": "icons",
    "fashion-mnist-train": "fashion-mnist",
}


def needed_builders(recipe: dict[str, Any]) -> list[str]:
    """The builders for the evaluation sets and for the recipe's ``shards = ...`` sources."""
    names = list(EVAL_BUILDERS)
    for spec in recipe.get("data", {}).get("sources", []):
        builder = SHARD_BUILDERS.get(spec.get("shards", ""))
        if builder and builder not in names:
            names.append(builder)
    return names


def shard_sets(recipe: dict[str, Any]) -> list[str]:
    return [s["shards"] for s in recipe.get("data", {}).get("sources", []) if "shards" in s]


def needed_packages(builders: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    return [p for b in builders for p in BUILDER_PACKAGES[b]] + list(extra)


#: Evaluation sets: (directory under data/eval, what it tests).
ZEROSHOT_SETS = (
    ("emoji-google", "unseen drawing style"),
    ("tuxpaint-photos-emoji", "unseen domain (photos)"),
    ("fashion-mnist-test", "unseen task"),
)
PROBE_SET = "fashion-mnist-test"
RETRIEVAL_SET = "tuxpaint-photos"
#: The Figure 6 axis at our scale.
SHOTS = (1, 2, 4, 8, 16)


def recipe_path() -> Path:
    """The demo's training recipe (a ``cliplab train`` TOML with shard names for sources)."""
    return Path(str(resources.files("cliplab.demo") / "recipe.toml"))


def load_recipe(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    with open(path or recipe_path(), "rb") as f:
        return tomllib.load(f)


def training_config(
    recipe: dict[str, Any],
    data_dir: Path,
    output: Path,
    overrides: Sequence[str] = (),
    fraction: float = 1.0,
) -> Any:
    """The recipe as a :class:`cliplab.train.Config`: each ``shards = "<name>"`` source becomes
    a webdataset source over ``data_dir/shards/<name>``. ``fraction`` < 1 keeps that share of
    every source's samples (the data-scaling study)."""
    from cliplab.data.builders import shard_urls
    from cliplab.train.config import Config, apply_override

    d = json.loads(json.dumps(recipe))  # a deep copy
    sources = []
    for spec in d["data"]["sources"]:
        spec = dict(spec)
        name = spec.pop("shards", None)
        if name is not None:
            urls = shard_urls(name, data_dir)
            spec = {"kind": "webdataset", "urls": urls, "name": name, **spec}
            if fraction < 1.0:
                info = json.loads((data_dir / "shards" / name / "build.json").read_text())
                spec["num_samples"] = max(1, int(info["output"]["count"] * fraction))
        sources.append(spec)
    d["data"]["sources"] = sources
    d["output"] = str(output)
    for item in overrides:
        apply_override(d, item)
    return Config.from_dict(d)


@dataclass
class DemoResult:
    """What a demo run produced: the summary rows and where everything is."""

    out: Path
    model: Path
    report: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- steps


def prepare_data(
    data_dir: Path,
    log: Log = print,
    builders: Sequence[str] = EVAL_BUILDERS,
    install: bool = True,
    extra_packages: Sequence[str] = (),
    shard_sets: Sequence[str] = (),
) -> None:
    """Install what ``builders`` read (skipped when present), then run them. Fashion-MNIST's
    training shards are built only when ``shard_sets`` (the recipe's) asks for them: the demo
    uses Fashion-MNIST as an unseen task."""
    sources = needed_packages(builders, extra_packages)
    from cliplab.data import builders as data_builders
    from cliplab.data import install as data_install

    if install:
        log(f"== sources -> {data_dir / 'sources'}")
        results = data_install.install(list(sources), data_dir / "sources", log=log)
        failed = {k: v["error"] for k, v in results.items() if "error" in v}
        if failed:
            raise RuntimeError(
                "could not install "
                + "; ".join(f"{k}: {v}" for k, v in failed.items())
                + " (the demo needs the package registries: npm and Debian's apt)"
            )
    log(f"== shards and evaluation sets -> {data_dir}")
    rest = [b for b in builders if b != "fashion-mnist"]
    uses_fashion_train = "fashion-mnist-train" in shard_sets
    data_builders.build(rest, data_dir / "sources", data_dir, log=log)
    if "fashion-mnist" in builders:
        # the test set only: Fashion-MNIST is an unseen task, its training images are not used
        from cliplab.data.builders import fashion_mnist

        log("fashion-mnist:")
        try:
            for o in fashion_mnist.build(
                data_dir / "sources", data_dir, log=log, train=uses_fashion_train
            ):
                log(o.line())
        except FileNotFoundError as e:
            log(f"  skipped: {e}")


def train(
    config: Any, log: Log = print, evaluators: Sequence[Any] = (), threads: int | None = None
) -> dict[str, Any]:
    """Train (resuming a run interrupted in the same output directory)."""
    from cliplab.train import Trainer

    if threads:
        config = config.replace(train=dataclasses.replace(config.train, threads=threads))
    log(f"== training -> {config.output} ({config.train.steps} steps)")
    trainer = Trainer(config, evaluators=list(evaluators))
    summary = trainer.fit()
    if summary.get("status") != "complete":
        raise RuntimeError(f"training stopped: {summary.get('status')}; re-run to resume")
    return summary


def _classification(path: Path) -> Any:
    from cliplab.evaluation import load_classification

    return load_classification(path)


def evaluate(
    model_dir: Path,
    data_dir: Path,
    out: Path,
    log: Log = print,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    max_iter: int = 100,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], Any, list[Any]]:
    """The demo's evaluation suite on ``model_dir``; returns (protocol results, feature store,
    the zero-shot sets).

    Sets that are not built are left out with a note (the summary says so)."""
    import cliplab
    from cliplab.evaluation import FeatureStore, Suite, load_retrieval, run_suite

    model, preprocess = cliplab.load(model_dir)
    model.eval()
    store = FeatureStore(model, preprocess, cache_dir=None, batch_size=256, progress=progress)
    eval_dir = data_dir / "eval"
    present = {p.name for p in eval_dir.iterdir()} if eval_dir.is_dir() else set()
    zeroshot = [_classification(eval_dir / n) for n, _ in ZEROSHOT_SETS if n in present]
    probe = [(_classification(eval_dir / PROBE_SET), None)] if PROBE_SET in present else []
    suite = Suite(
        zeroshot=zeroshot,
        linear_probe=probe,
        fewshot=probe,
        retrieval=[load_retrieval(eval_dir / RETRIEVAL_SET)] if RETRIEVAL_SET in present else [],
        shots=list(shots),
        seeds=list(seeds),
        max_iter=max_iter,
    )
    log(f"== evaluation ({len(zeroshot)} zero-shot sets, probe, few-shot, retrieval)")
    return run_suite(store, suite), store, zeroshot


def summary_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per headline figure: set, what it tests, protocol, metric, value, chance."""
    what = dict(ZEROSHOT_SETS)
    rows: list[dict[str, Any]] = []

    def add(dataset: str, test: str, protocol: str, metric: str, value: Any, chance: Any) -> None:
        rows.append(
            {
                "set": dataset,
                "test": test,
                "protocol": protocol,
                "metric": metric,
                "value": value,
                "chance": chance,
            }
        )

    for r in results:
        p = r["protocol"]
        if p == "zeroshot":
            classes = round(1 / r["chance"])
            for k in (1, 5):
                if r.get(f"top{k}") is not None and classes > k:
                    add(
                        r["dataset"],
                        what.get(r["dataset"], ""),
                        "zero-shot",
                        f"top-{k}",
                        r[f"top{k}"],
                        k / classes,
                    )
        elif p == "linear-probe":
            metrics = r.get("metrics", {})
            n = metrics.get("num_classes")
            add(
                r["dataset"],
                "all training images",
                "linear probe",
                "top-1",
                metrics.get("top1"),
                1 / n if n else None,
            )
        elif p == "fewshot":
            curve = r.get("curve", {})
            for k in ("1", "16"):
                if k in curve:
                    add(
                        r["dataset"],
                        f"{k} per class, mean of {len(r.get('seeds', []))} draws",
                        f"{k}-shot probe",
                        "top-1",
                        curve[k]["mean"],
                        r.get("chance"),
                    )
        elif p == "retrieval":
            n_images = r.get("n_images") or 0
            n_texts = r.get("n_texts") or 0
            for direction, label, pool in (
                ("text_to_image", "text->image", n_images),
                ("image_to_text", "image->text", n_texts),
            ):
                for k in (1, 5):
                    key = f"{direction}_R@{k}"
                    if key in r:
                        # image->text: any of an image's captions counts, so chance is
                        # higher than k / texts; k / texts is given as a lower bound
                        add(
                            r["dataset"],
                            "unseen domain, descriptions",
                            f"retrieval {label}",
                            f"R@{k}",
                            r[key],
                            min(1.0, k / pool) if pool else None,
                        )
    return rows


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


# --------------------------------------------------------------------------- plots


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Bars: each zero-shot/probe figure with its chance level marked."""
    plt = _pyplot()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    from cliplab.evaluation.features import open_image
    from cliplab.evaluation.protocols import resolve_templates
    from cliplab.zeroshot import logit_scale_of, zero_shot_logits

    plt = _pyplot()
    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(
        len(sets), per_set, figsize=(2.3 * per_set, 2.6 * len(sets)), squeeze=False
    )
    for row, dataset in zip(axes, sets, strict=True):
        weights = store.classifier(dataset.classnames, resolve_templates(None, dataset))
        features = store.dataset(dataset)
        picks = torch.randperm(len(dataset), generator=g)[:per_set].tolist()
        logits = zero_shot_logits(features[picks], weights, logit_scale_of(store.model))
        probs = logits.float().softmax(-1)
        for ax, i, p in zip(row, picks, probs, strict=False):
            ax.imshow(open_image(dataset.images[i]).convert("RGB"))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- report


def write_report(
    out: Path,
    rows: Sequence[dict[str, Any]],
    results: Sequence[dict[str, Any]],
    plots: dict[str, str],
    meta: dict[str, Any],
) -> Path:
    from cliplab.evaluation.report import section_markdown

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
        lines += [section_markdown(r), ""]
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
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


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


def run_demo(
    data_dir: str | os.PathLike[str] = "data",
    out: str | os.PathLike[str] = "runs/demo",
    *,
    recipe: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    install: bool = True,
    track_every: int | None = None,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    log: Log = print,
    progress: bool = True,
) -> DemoResult:
    """The whole demo (see the module docstring); returns its summary."""
    from cliplab.evaluation import ZeroShotHook
    from cliplab.evaluation.report import plot_fewshot, write_outputs

    data_dir, out = Path(data_dir), Path(out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    recipe_dict = load_recipe(recipe)
    prepare_data(
        data_dir,
        log,
        needed_builders(recipe_dict),
        install=install,
        shard_sets=shard_sets(recipe_dict),
    )
    seconds["data"] = time.perf_counter() - start

    t0 = time.perf_counter()
    config = training_config(recipe_dict, data_dir, out / "train", overrides)
    hooks = []
    google = data_dir / "eval" / "emoji-google"
    if google.is_dir():
        hooks.append(ZeroShotHook(_classification(google), max_images=None))
    interval = track_every if track_every is not None else max(1, config.train.steps // 6)
    config = config.replace(eval=dataclasses.replace(config.eval, interval=interval))
    summary = train(config, log, hooks)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model_dir = out / "train" / "model"
    results, store, zeroshot_sets = evaluate(
        model_dir, data_dir, out, log, shots, seeds, progress=progress
    )
    seconds["evaluate"] = time.perf_counter() - t0

    rows = summary_rows(results)
    plots: dict[str, str] = {}
    curves = out / "train" / "curves.png"
    if curves.is_file():
        plots["curves"] = "train/curves.png"
    (out / "eval").mkdir(parents=True, exist_ok=True)
    for r in results:
        write_outputs(r, out / "eval", f"{r['protocol']}-{r['dataset']}")
    if rows:
        plots["accuracy"] = str(plot_accuracy(rows, out / "accuracy.png").relative_to(out))
    fewshot = [r for r in results if r["protocol"] == "fewshot"]
    if fewshot:
        plot_fewshot(
            {"demo model": fewshot[0]},
            out / "fewshot.png",
            f"zero-shot vs k-shot linear probes: {fewshot[0]['dataset']}",
        )
        plots["fewshot"] = "fewshot.png"
    if zeroshot_sets:
        plot_predictions(store, zeroshot_sets, out / "predictions.png")
        plots["predictions"] = "predictions.png"

    model = store.model
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "model": str(model_dir),
        "config": {"model": config.model.name, **config.model.overrides},
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        "steps": summary.get("step"),
        "batch_size": config.data.batch_size,
        "samples_seen": int(summary.get("step", 0)) * config.data.batch_size,
        "training_data": [s.get("name") or s.get("kind", "?") for s in config.data.sources],
        "train_minutes": seconds["train"] / 60,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    report = write_report(out, rows, results, plots, meta)
    (out / "summary.json").write_text(
        json.dumps({"rows": rows, "meta": meta}, indent=1, default=str) + "\n"
    )
    seconds["total"] = time.perf_counter() - start
    return DemoResult(out=out, model=model_dir, report=report, rows=rows, seconds=seconds)


def chance_note(rows: Sequence[dict[str, Any]]) -> str:
    """How far above chance the headline figures are (for the console)."""
    parts = []
    for r in rows:
        if r["protocol"] == "zero-shot" and r["metric"] == "top-1" and r["chance"]:
            parts.append(f"{r['set']}: {r['value'] / r['chance']:.0f}x chance")
    return ", ".join(parts)


__all__ = [
    "BUILDER_PACKAGES",
    "EVAL_BUILDERS",
    "DemoResult",
    "evaluate",
    "format_table",
    "load_recipe",
    "prepare_data",
    "run_demo",
    "summary_rows",
    "train",
    "training_config",
]
