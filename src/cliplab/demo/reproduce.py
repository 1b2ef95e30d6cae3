"""``cliplab reproduce``: the paper's findings at our scale, in under an hour on 2 CPU cores.

Uses the demo's data and recipe (:mod:`cliplab.demo.pipeline`) and its trained model
(``runs/demo/train/model``, trained here first if missing), then:

1. **zero-shot vs few-shot** (Figure 6): k-shot linear probes on the model's frozen features
   against zero-shot on the same test images, where they cross; on emoji *groups* across the
   held-out styles (subcategories and categories: their names are in the training captions,
   and each has hundreds of test images; prompts chosen on the validation style, Emoji One)
   and on Fashion-MNIST;
2. **prompt engineering** (section 3.1.4): bare label vs one template vs the ensemble, and
   the prompts a user would engineer (chosen on validation data: the Emoji One style for
   emoji names, half of Fashion-MNIST for the other half), on Google emoji, Tux Paint photos
   and Fashion-MNIST; for the demo model, whose captions say the bare label one time in
   eight (no gap for a prompt to close), and for a model trained the same way on captions
   that never are the bare label (as web alt texts seldom are: the paper's setting);
3. **robustness** (Figures 13-14): zero-shot vs a linear probe fitted on the training style
   (Twitter emoji with skin tones), on held-out styles (Google, and Apple/Facebook where
   installed); effective robustness against the probes' trend line. (Photos cannot be
   measured this way: only one Tux Paint photo concept has skin tones.)
4. **compute scaling** (Figure 2/9): four model sizes on the same data, each trained for
   steps in proportion to its training FLOPs per pair (samples in proportion to model size,
   as compute-optimal scaling prescribes), the largest being the demo model itself; zero-shot
   error on Google emoji against training GFLOPs (counted by torch's ``FlopCounterMode``),
   log-log with a fitted line;
5. **data scaling**: the demo model on 25%, 50% and 100% of the training pairs;
6. **data overlap** (section 5): test images with a near duplicate among the training
   images (:mod:`cliplab.evaluation.overlap`, the demo model as the detector) and zero-shot
   on All / Clean / Overlap images; a training style's test set (Twitter) as the control.

Writes ``runs/reproduce/results.json`` and, from it, ``runs/reproduce/report.md`` with each
figure beside the paper's claim (:mod:`cliplab.demo.reproduce_report`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cliplab.config import flatten_settings
from cliplab.demo import plan
from cliplab.demo.plan import Log
from cliplab.demo.report import machine
from cliplab.demo.reproduce_report import NO_BARE_MODEL, report_from_results
from cliplab.demo.train import DEFAULT_MINUTES, fit_steps, run_steps, train
from cliplab.evaluation.output import pyplot, save_figure, slug
from cliplab.evaluation.registry import get, result_from_dict
from cliplab.fileio import write_json

#: The compute-scaling family, smallest first: overrides of the recipe's model ("s", empty, is
#: the recipe's own shape: the demo model is reused for it). Each trains for
#: demo steps x (its GFLOPs per pair / the demo model's): 0.17x, 0.35x, 0.63x and 1x here.
#: (Trained instead for the same 700 steps each, four sizes from 3.4M to 7.8M parameters gave
#: no trend: the larger ones were under-trained; the run of 2026-11-30.)
SIZES: dict[str, dict[str, Any]] = {
    "xxs": {"embed_dim": 48, "vision": {"width": 48, "layers": 2, "heads": 2},
            "text": {"width": 48, "layers": 1, "heads": 2}},
    "xs": {"embed_dim": 64, "vision": {"width": 64, "layers": 2, "heads": 2},
           "text": {"width": 64, "layers": 2, "heads": 2}},
    "s-": {"embed_dim": 96, "vision": {"width": 96, "layers": 2, "heads": 3},
           "text": {"width": 96, "layers": 1, "heads": 3}},
    "s": {},
}  # fmt: skip
FRACTIONS = (0.25, 0.5)
ROBUSTNESS_SOURCE = "emoji-twitter-skins"
# Tux Paint photos are not among them: only one of their 106 concepts has skin tones, so
# after matching classes to the source nothing would be left to measure.
SHIFTED = ("emoji-google", "emoji-apple", "emoji-facebook")
PROMPT_SETS = ("emoji-google", "tuxpaint-photos-emoji", "fashion-mnist-test")
#: where each prompt set's templates are chosen: a validation set, or "half" (a stratified
#: half of the set's images; the other half is measured)
PROMPT_VALIDATION = {
    "emoji-google": "emoji-emojione",
    "tuxpaint-photos-emoji": "emoji-emojione",  # the same kind of class names (emoji labels)
    "fashion-mnist-test": "half",
}
#: the prompt study's second model: the demo recipe with captions that never are the label
NO_BARE_CAPTIONS = "cliplab.recipes.captions:draw_caption_no_bare_label"
TARGET = "emoji-google"
#: the few-shot study's emoji-group tasks: (class_info field, fewest test images per group)
GROUP_LEVELS = (("subcategory", 60), ("category", 60))
#: the held-out training style group prompts are chosen on (never a test style)
VALIDATION_STYLE = "emoji-emojione"
#: the overlap study's test sets (those installed): unseen styles, photos, another task
OVERLAP_SETS = (TARGET, "emoji-apple", "emoji-facebook", "tuxpaint-photos-emoji",
                "fashion-mnist-test")  # fmt: skip
#: its control: the test set of a training style (the same drawings as the training shards),
#: which a working detector flags as overlap; reported, never judged
OVERLAP_CONTROL = "emoji-twitter"


def training_gflops(
    model: torch.nn.Module, caption_tokens: int = 12, low_res: tuple[int, float] = (0, 0.0)
) -> float:
    """Forward + backward GFLOPs per image-text pair: 3x the forward FLOPs counted by
    ``torch.utils.flop_counter`` on one image and one caption of ``caption_tokens`` tokens.
    ``low_res``: (size, share of the steps) of a low-resolution phase (``train.low_res_size``,
    ``train.low_res_until``), whose images are counted at that size."""
    from torch.utils.flop_counter import FlopCounterMode

    def forward_flops(size: int) -> int:
        image = torch.zeros(1, 3, size, size)
        tokens = torch.zeros(1, model.context_length, dtype=torch.long)
        tokens[0, 0] = 49406
        tokens[0, 1 : caption_tokens - 1] = 320
        tokens[0, caption_tokens - 1] = 49407
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.encode_image(image)
            model.encode_text(tokens)
        return counter.get_total_flops()

    flops = forward_flops(model.image_size)
    size, share = low_res
    if size:
        flops = share * forward_flops(size) + (1 - share) * flops
    return 3 * flops / 1e9


def _train_variant(
    name: str,
    recipe: str | os.PathLike[str] | None,
    data_dir: Path,
    out: Path,
    log: Log,
    overrides: Sequence[str] = (),
    model_overrides: dict[str, Any] | None = None,
    fraction: float = 1.0,
    reused: list[str] | None = None,
    caption_fn: str | None = None,
) -> Path:
    """Train (or reuse) one variant of the recipe: other model sizes, part of the data or
    another caption function (for every source). A reused variant's name is appended to
    ``reused`` (the report says so beside its time)."""
    from cliplab.data.sources import ShardsSpec

    config = plan.training_config(recipe, data_dir, out / name, overrides)
    if model_overrides:
        merged = {**config.model.settings, **flatten_settings(model_overrides)}
        config = config.replace(model=dataclasses.replace(config.model, settings=merged))

    def source(s: Any) -> Any:
        if fraction < 1.0 and isinstance(s, ShardsSpec):
            s = dataclasses.replace(s, fraction=fraction)
        return dataclasses.replace(s, caption_fn=caption_fn) if caption_fn else s

    sources = tuple(source(s) for s in config.data.sources)
    config = config.replace(data=dataclasses.replace(config.data, sources=sources))
    config = config.replace(
        eval=dataclasses.replace(config.eval, interval=0, sets=()),
        log=dataclasses.replace(config.log, progress=True, plots=False),
    )
    model_dir = out / name / "model"
    if (model_dir / "config.json").is_file():
        log(f"   {name}: reusing the trained model in {model_dir}")
        if reused is not None:
            reused.append(name)
    else:
        train(config, log)
    return model_dir


def _variant_model(config: Any, model_overrides: dict[str, Any]) -> torch.nn.Module:
    """An untrained model of the recipe with ``model_overrides`` (for counting its FLOPs)."""
    from cliplab.factory import create_model

    return create_model(config.model.model_config().replace(**model_overrides))


def group_fewshot(
    store: Any,
    eval_dir: Path,
    levels: Sequence[tuple[str, int]],
    log: Log,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
) -> list[dict[str, Any]]:
    """Zero-shot vs k-shot probes on emoji groups (``levels``: class_info field, fewest test
    images per group) across the held-out styles that are installed; the zero-shot set-up
    (prompt set, group names alone or with their members) is chosen on the validation style.
    One JSON-ready entry per task; tasks that cannot be built are logged and left out."""
    from cliplab.data.evalsets import load_classification
    from cliplab.evaluation.groups import class_info_by_name, regroup, zero_shot_candidates
    from cliplab.evaluation.protocols.zeroshot import choose_zero_shot

    styles = [load_classification(eval_dir / n) for n in SHIFTED if (eval_dir / n).is_dir()]
    if not styles or not (eval_dir / VALIDATION_STYLE).is_dir():
        log(f"   emoji groups skipped: needs {VALIDATION_STYLE} and a held-out style")
        return []
    info = class_info_by_name(styles)
    validation_style = load_classification(eval_dir / VALIDATION_STYLE)
    names = "+".join(s.name for s in styles)
    out = []
    for field, min_images in levels:
        try:
            test = regroup(styles, field, min_images=min_images, name=f"{names} by {field}")
            val = regroup([validation_style], field, info=info, classes=test.classnames)
        except ValueError as e:
            log(f"   emoji {field} groups skipped: {e}")
            continue
        val_setups, test_setups = zero_shot_candidates(val), zero_shot_candidates(test)
        chosen, scores = choose_zero_shot(store, val_setups)
        # the paper's protocol (class names and prompts only), chosen the same way, for contrast
        plain = [k for k, v in val_setups.items() if v.class_members is None]
        plain_chosen = max(plain, key=lambda k: scores[k])  # the first of equal scores
        log(f"   {field}: {test.num_classes} groups, {len(test)} test images; zero-shot "
            f"'{chosen}' (validation top-1 {scores[chosen]:.1%})")  # fmt: skip
        options = {"shots": tuple(shots), "seeds": 3, "max_iter": 300}
        few = get("fewshot")(store, options, dataset=test_setups[chosen])
        # the same test split (the split's seed is the protocol's), one cheap probe
        names_only = get("fewshot")(
            store, {**options, "shots": (1,), "seeds": 1}, dataset=test_setups[plain_chosen]
        )
        out.append(
            {
                "field": field,
                "validation_set": VALIDATION_STYLE,
                "templates": chosen,
                "validation_top1": scores,
                "validation_images": len(val),
                "classes": test.classnames,
                "test_images": len(test),
                "names_only": {"templates": plain_chosen, "zero_shot": names_only.zero_shot},
                "result": few.to_dict(),
            }
        )
    return out


def prompt_sets(eval_dir: Path, log: Log) -> list[tuple[Any, Any]]:
    """(test, validation) for each installed :data:`PROMPT_SETS` set, its validation set from
    :data:`PROMPT_VALIDATION` (a set is left out when that is not installed); loaded once for
    every model of the study."""
    from cliplab.data.evalsets import load_classification
    from cliplab.evaluation.probe import stratified_split

    out = []
    for name in PROMPT_SETS:
        where = PROMPT_VALIDATION[name]
        if not (eval_dir / name).is_dir() or (where != "half" and not (eval_dir / where).is_dir()):
            log(f"   prompts on {name} skipped: not installed (or its validation set)")
            continue
        test = load_classification(eval_dir / name)
        if where == "half":
            kept, held = stratified_split(test.labels, 0.5, seed=0)
            validation = test.subset(held, name=f"{name} (validation half)")
            test = test.subset(kept, name=f"{name} (other half)")
        else:
            validation = load_classification(eval_dir / where)
        out.append((test, validation))
    return out


def overlap_study(store: Any, sources: Sequence[Any], eval_dir: Path, out: Path,
                  log: Log) -> dict[str, Any]:  # fmt: skip
    """The overlap analysis of the demo model (the detector too): the installed
    :data:`OVERLAP_SETS` and :data:`OVERLAP_CONTROL` against the training ``sources``,
    written to ``out/overlap.{json,md,png}``. The report's dict with its control sets, or
    ``{"skipped": why}`` when no test set is installed or the analysis cannot run."""
    from cliplab.evaluation.overlap import overlap_analysis, write_overlap

    names = [n for n in (*OVERLAP_SETS, OVERLAP_CONTROL) if (eval_dir / n).is_dir()]
    for n in (n for n in (*OVERLAP_SETS, OVERLAP_CONTROL) if n not in names):
        log(f"   overlap: {n} not installed: left out")
    if not any(n in OVERLAP_SETS for n in names):
        return {"skipped": "none of its test sets is installed"}
    try:
        report = overlap_analysis(sources, [eval_dir / n for n in names], store,
                                  model_name="the demo model", log=lambda m: log(f"   {m}"))  # fmt: skip
    except ValueError as e:  # e.g. a set that is not a classification set, no images
        log(f"   overlap skipped: {e}")
        return {"skipped": str(e)}
    write_overlap(report, out)
    return {**report.to_dict(), "control": [n for n in names if n == OVERLAP_CONTROL]}


def _zero_shot_top1(model_dir: Path, dataset: Any) -> tuple[float, float, Any]:
    import cliplab
    from cliplab.encode import FeatureStore

    model, preprocess = cliplab.load(model_dir)
    store = FeatureStore(model, preprocess, batch_size=256, progress=False)
    r = get("zeroshot")(store, dataset=dataset)
    return r.top1, r.top5, model


def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares of log10 y = a log10 x + b; returns (a, b)."""
    lx = [math.log10(x) for x in xs]
    ly = [math.log10(y) for y in ys]
    n = len(lx)
    mx, my = sum(lx) / n, sum(ly) / n
    sxx = sum((x - mx) ** 2 for x in lx)
    a = sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / sxx if sxx else 0.0
    return a, my - a * mx


def fit_r2(xs: Sequence[float], ys: Sequence[float]) -> float:
    """R² of :func:`fit_power_law`'s line in log-log space (1 = every point on it)."""
    a, b = fit_power_law(xs, ys)
    lx = [math.log10(x) for x in xs]
    ly = [math.log10(y) for y in ys]
    mean = sum(ly) / len(ly)
    total = sum((y - mean) ** 2 for y in ly)
    residual = sum((y - (a * x + b)) ** 2 for x, y in zip(lx, ly, strict=True))
    return 1.0 - residual / total if total else 1.0


def plot_scaling(
    points: list[dict[str, Any]], key: str, path: Path, xlabel: str, title: str
) -> None:
    plt = pyplot()
    xs = [p[key] for p in points]
    ys = [100 * (1 - p["top1"]) for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(xs, ys, "o", color="#4c72b0")
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(p["name"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if len(points) >= 2:
        a, b = fit_power_law(xs, ys)
        lo, hi = min(xs), max(xs)
        grid = [lo * (hi / lo) ** (i / 20) for i in range(21)]
        ax.loglog(grid, [10**b * g**a for g in grid], "--", color="#c44e52",
                  label=f"fit: error ∝ x^{a:.3f} (R² {fit_r2(xs, ys):.2f})")  # fmt: skip
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"zero-shot top-1 error on {TARGET} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def run_reproduce(
    data_dir: str | os.PathLike[str] = "data",
    out: str | os.PathLike[str] = "runs/reproduce",
    demo_dir: str | os.PathLike[str] = "runs/demo",
    *,
    recipe: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    install: bool = True,
    sizes: dict[str, dict[str, Any]] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    group_levels: Sequence[tuple[str, int]] = GROUP_LEVELS,
    log: Log = print,
    progress: bool = True,
) -> Path:
    """Every study (see the module docstring); returns the report's path."""
    import cliplab
    from cliplab.data.evalsets import load_classification
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.protocols.fewshot import plot_fewshot
    from cliplab.evaluation.protocols.prompts import plot_prompts
    from cliplab.evaluation.protocols.robustness import plot_robustness

    start = time.perf_counter()
    reused: list[str] = []
    data_dir, out, demo_dir = Path(data_dir), Path(out), Path(demo_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = SIZES if sizes is None else sizes
    config = plan.training_config(recipe, data_dir, demo_dir / "train", overrides)
    evalsets = list(dict.fromkeys(["fashion-mnist-test", *PROMPT_SETS, ROBUSTNESS_SOURCE, TARGET]))
    # Apple and Facebook emoji: two more held-out styles for the robustness and few-shot
    # studies; Emoji One: the validation style of the few-shot study's prompts; Twitter
    # emoji's test set: the overlap study's control (each if installed)
    plan.prepare_data(
        data_dir,
        plan.needed_outputs(config, [*plan.evaluation_sets(config, []), *evalsets]),
        log,
        install,
        optional=[f"eval/{n}" for n in (*SHIFTED, VALIDATION_STYLE, OVERLAP_CONTROL)],
    )
    eval_dir = data_dir / "eval"

    def have(name: str) -> bool:
        return (eval_dir / name).is_dir()

    # the demo model (the largest size, 100% of the data)
    demo_model = demo_dir / "train" / "model"
    if not (demo_model / "config.json").is_file():
        log(f"== no demo model at {demo_model}: training it")
        train(fit_steps(config, DEFAULT_MINUTES, overrides, log), log)
    model, preprocess = cliplab.load(demo_model)
    store = FeatureStore(model, preprocess, batch_size=256, progress=progress)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "training_data": plan.shard_sets(config),
        "seconds": {},
    }
    t0 = time.perf_counter()

    # 1. zero-shot vs few-shot
    log("== zero-shot vs few-shot (emoji groups, Fashion-MNIST)")
    groups = group_fewshot(store, eval_dir, group_levels, log)
    fmnist = load_classification(eval_dir / "fashion-mnist-test")
    few = get("fewshot")(
        store, {"shots": (1, 2, 4, 8, 16, 32), "seeds": 3, "max_iter": 150}, dataset=fmnist
    )
    curves = {f"emoji {g['field']}": result_from_dict(g["result"]) for g in groups}
    plot_fewshot({**curves, "Fashion-MNIST": few}, out / "fewshot.png",
                 "zero-shot vs k-shot linear probes")  # fmt: skip
    results["fewshot"] = few.to_dict()
    results["group_fewshot"] = groups
    # 2. prompts: the demo model, and one trained on captions that never are the bare label
    log("== prompt engineering")
    demo_steps = run_steps(demo_dir / "train") or config.train.steps
    no_bare = _train_variant(NO_BARE_MODEL, recipe, data_dir, out / "runs", log,
                             [*overrides, f"train.steps={demo_steps}"], reused=reused,
                             caption_fn=NO_BARE_CAPTIONS)  # fmt: skip
    no_bare_model, no_bare_pre = cliplab.load(no_bare)
    stores = {
        "demo": store,
        NO_BARE_MODEL: FeatureStore(no_bare_model, no_bare_pre, batch_size=256,
                                         progress=progress),
    }  # fmt: skip
    results["prompts"] = []
    tasks = prompt_sets(eval_dir, log)
    for label, s in stores.items():
        for test, validation in tasks:
            r = get("prompts")(s, dataset=test, validation=validation)
            log(f"   {r.summary()}; chosen on {validation.name}: {r.chosen}")
            plot_prompts(r, out / f"prompts-{label}-{slug(r.key)}.png", f"{label}: {r.key}")
            results["prompts"].append({**r.to_dict(), "model": label})
    # 3. robustness
    log("== robustness to distribution shift")
    source = load_classification(eval_dir / ROBUSTNESS_SOURCE)
    shifted = [load_classification(eval_dir / n) for n in SHIFTED if have(n)]
    try:
        robust = get("robustness")(store, {"max_iter": 300}, source=source, shifted=shifted)
        plot_robustness({"demo model": robust}, out / "robustness.png")
        results["robustness"] = robust.to_dict()
    except ValueError as e:  # e.g. a source with one image per class: no probe test split
        log(f"   robustness skipped: {e}")
        results["robustness"] = {"protocol": "robustness", "skipped": str(e)}
    results["seconds"]["analyses"] = time.perf_counter() - t0

    # 4. compute scaling: steps in proportion to each size's FLOPs per pair
    t0 = time.perf_counter()
    target = load_classification(eval_dir / TARGET)
    runs_dir = out / "runs"
    low_res = (config.train.low_res_size, config.train.low_res_until)
    demo_gflops = training_gflops(model, low_res=low_res)
    demo_zs = get("zeroshot")(store, dataset=target)  # the demo model's features, once
    batch = config.data.batch_size
    points = []
    for name, ov in sizes.items():
        if not ov:  # the demo's own shape: the demo model, trained for demo_steps
            per_pair, steps = demo_gflops, demo_steps
            top1, top5, m = demo_zs.top1, demo_zs.top5, model
        else:
            per_pair = training_gflops(_variant_model(config, ov), low_res=low_res)
            steps = max(1, round(demo_steps * per_pair / demo_gflops))
            log(f"== compute scaling: model {name}, {steps} steps")
            steps_set = [*overrides, f"train.steps={steps}"]
            model_dir = _train_variant(
                name, recipe, data_dir, runs_dir, log, steps_set, ov, reused=reused
            )
            top1, top5, m = _zero_shot_top1(model_dir, target)
        points.append(
            {
                "name": name,
                "parameters": sum(p.numel() for p in m.parameters()),
                "gflops_per_pair": per_pair,
                "steps": steps,
                "train_gflops": per_pair * steps * batch,
                "top1": top1,
                "top5": top5,
            }
        )
    points.sort(key=lambda p: p["train_gflops"])
    slope, _ = fit_power_law([p["train_gflops"] for p in points], [1 - p["top1"] for p in points])
    plot_scaling(points, "train_gflops", out / "compute-scaling.png", "training GFLOPs",
                 f"Compute scaling: {len(points)} sizes, steps in proportion to size")  # fmt: skip
    results["compute_scaling"] = {
        "points": points,
        "slope": slope,
        "r2": fit_r2([p["train_gflops"] for p in points], [1 - p["top1"] for p in points]),
        "steps_rule": f"demo steps ({demo_steps}) x GFLOPs per pair / the demo model's",
    }
    results["seconds"]["compute_scaling"] = time.perf_counter() - t0

    # 5. data scaling
    t0 = time.perf_counter()
    data_points = []
    # the fractions train as many steps as the demo model did (fitted to the machine's speed)
    fraction_overrides = [*overrides, f"train.steps={demo_steps}"]
    for fraction in fractions:
        name = f"data-{int(100 * fraction)}pct"
        log(f"== data scaling: {100 * fraction:.0f}% of the pairs")
        model_dir = _train_variant(
            name, recipe, data_dir, runs_dir, log, fraction_overrides, None, fraction, reused
        )
        top1, top5, _ = _zero_shot_top1(model_dir, target)
        data_points.append({"name": name, "fraction": fraction, "top1": top1, "top5": top5})
    data_points.append({"name": "data-100pct", "fraction": 1.0, "top1": demo_zs.top1,
                        "top5": demo_zs.top5})  # fmt: skip
    plot_scaling(data_points, "fraction", out / "data-scaling.png", "fraction of training pairs",
                 "Data scaling: the demo model on part of the data")  # fmt: skip
    results["data_scaling"] = {"points": data_points}
    results["seconds"]["data_scaling"] = time.perf_counter() - t0

    # 6. data overlap: the demo model's training images against the test sets
    t0 = time.perf_counter()
    log("== data overlap (test images duplicated in the training data)")
    results["overlap"] = overlap_study(store, config.data.sources, eval_dir, out, log)
    results["seconds"]["overlap"] = time.perf_counter() - t0
    results["seconds"]["total"] = time.perf_counter() - start
    results["reused_models"] = reused
    write_json(out / "results.json", results, indent=1)

    return report_from_results(out)
