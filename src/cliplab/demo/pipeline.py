"""``cliplab demo``: install real sources, build shards, train a small CLIP on CPU, evaluate.

Steps (each shows progress; each is cached or resumable, so a re-run is cheap):

1. **plan** (:mod:`~cliplab.demo.plan`): the recipe (``recipe.toml``, a plain ``cliplab
   train`` config) and the evaluation suite name the shard sets and evaluation sets they
   use; the builders' declarations say which npm and Debian packages make them, and only
   those are installed (into ``data/sources``) and built;
2. **training** (:mod:`~cliplab.demo.train`): the Twitter emoji style (with its skin-tone
   variants) held in memory, captions drawn afresh every epoch; zero-shot accuracy on the
   Google style is tracked during training (the recipe's ``[[eval.sets]]``);
3. **evaluation** (:mod:`~cliplab.demo.evaluate`): zero-shot with prompt ensembling on
   Google-style emoji (an unseen drawing style; Apple and Facebook too where their sources
   install), Tux Paint photos of emoji concepts (an
   unseen domain) and Fashion-MNIST (an unseen task); a linear probe and the few-shot curve
   on Fashion-MNIST; retrieval on the Tux Paint photo descriptions;
4. **report** (:mod:`~cliplab.demo.report`): ``runs/demo/report.md`` with the summary table,
   training curves, accuracy per set, zero-shot vs k-shot and a grid of test images with
   their top predictions; ``runs/demo/train/model`` works with ``cliplab classify``;
5. **search** (:mod:`~cliplab.demo.search`): the training pool and the held-out sets
   embedded and indexed in ``runs/demo/search/all``, for ``cliplab serve``.

The Google emoji style and all Tux Paint photos are never trained on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliplab.demo import plan
from cliplab.demo.evaluate import evaluate, summary_rows
from cliplab.demo.plan import SHOTS, Log
from cliplab.demo.report import machine, plot_accuracy, plot_predictions, write_report
from cliplab.demo.search import embed_collections
from cliplab.demo.train import fit_steps, train
from cliplab.fileio import write_json

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """What a demo run produced: the summary rows and where everything is."""

    out: Path
    model: Path
    report: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    search: Path | None = None  # the embedded, indexed collections (`cliplab serve` it)


def run_demo(
    data_dir: str | os.PathLike[str] = "data",
    out: str | os.PathLike[str] = "runs/demo",
    *,
    recipe: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    install: bool = True,
    shots: Sequence[int] = SHOTS,
    seeds: int = 3,
    log: Log = print,
    progress: bool = True,
    embed_for_search: bool = True,
    minutes: float = 0.0,
    deadline: float | None = None,
) -> DemoResult:
    """The whole demo (see the module docstring); returns its summary. ``minutes`` > 0 fits
    the recipe's step count to that training budget on this machine
    (:func:`~cliplab.demo.train.fit_steps`); ``deadline`` (``time.time()`` seconds) lowers the
    budget to what is left before it, less what evaluation and search take."""
    from cliplab.evaluation.protocols.fewshot import plot_fewshot

    data_dir, out = Path(data_dir), Path(out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    config = plan.training_config(recipe, data_dir, out / "train", overrides)
    runs = plan.suite(shots, seeds)
    optional = [f"eval/{name}" for name in plan.OPTIONAL_ZEROSHOT_SETS]
    built = plan.prepare_data(
        data_dir,
        plan.needed_outputs(config, plan.evaluation_sets(config, runs)),
        log,
        install,
        optional=optional,
    )
    present = [o.split("/", 1)[1] for o in optional if o in built]
    seconds["data"] = time.perf_counter() - start

    t0 = time.perf_counter()
    config = fit_steps(config, minutes, overrides, log, deadline=deadline)
    summary = train(config, log)
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model_dir = out / "train" / "model"
    results, store, zeroshot_sets = evaluate(
        model_dir, data_dir, log, shots, seeds, progress=progress, optional=present
    )
    seconds["evaluate"] = time.perf_counter() - t0

    rows = summary_rows(results)
    plots: dict[str, str] = {}
    if (out / "train" / "curves.png").is_file():
        plots["curves"] = "train/curves.png"
    for r in results:
        r.write(out / "eval", f"{r.protocol}-{r.key}")
    if rows:
        plots["accuracy"] = str(plot_accuracy(rows, out / "accuracy.png").relative_to(out))
    fewshot = [r for r in results if r.protocol == "fewshot"]
    if fewshot:
        title = f"zero-shot vs k-shot linear probes: {fewshot[0].key}"
        plot_fewshot({"demo model": fewshot[0]}, out / "fewshot.png", title)
        plots["fewshot"] = "fewshot.png"
    if zeroshot_sets:
        plot_predictions(store, zeroshot_sets, out / "predictions.png")
        plots["predictions"] = "predictions.png"

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "model": str(model_dir),
        "config": config.model.to_table(),
        "parameters": f"{sum(p.numel() for p in store.model.parameters()) / 1e6:.1f}M",
        "steps": summary.get("step"),
        "batch_size": config.data.batch_size,
        "samples_seen": int(summary.get("step", 0)) * config.data.batch_size,
        "training_data": [s.display_name for s in config.data.sources],
        "train_minutes": seconds["train"] / 60,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    report = write_report(out, rows, results, plots, meta)
    write_json(out / "summary.json", {"rows": rows, "meta": meta}, indent=1)

    t0 = time.perf_counter()
    search = None
    if embed_for_search:
        log(f"== search: embedding the collections -> {out / 'search'}")
        search = embed_collections(model_dir, data_dir, out / "search", log)
        seconds["search"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - start
    return DemoResult(
        out=out, model=model_dir, report=report, rows=rows, seconds=seconds, search=search
    )
