"""Markdown and plots for the protocols' results (matplotlib, Agg backend, no display).

Each ``*_markdown`` function turns one protocol's result dict into a Markdown section; each
``plot_*`` writes one PNG. :func:`write_outputs` writes a result as JSON + Markdown (+ PNGs)
into a directory, which is what every ``cliplab eval`` command does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "fewshot_markdown",
    "linear_probe_markdown",
    "markdown_table",
    "plot_confusion",
    "plot_fewshot",
    "plot_prompts",
    "plot_robustness",
    "prompts_markdown",
    "retrieval_markdown",
    "robustness_markdown",
    "section_markdown",
    "write_json",
    "write_outputs",
    "zeroshot_markdown",
]

#: Confusion matrices are drawn for at most this many classes.
MAX_CONFUSION_CLASSES = 30


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'cliplab[eval]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string ("-" for missing values)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(str(h) for h in headers) + " |"]
    out.append("|" + "|".join("---" for _ in headers) + "|")
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


# --------------------------------------------------------------------------- plots


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    classnames: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """A row-normalised confusion matrix (true class down, prediction across)."""
    plt = _pyplot()
    import numpy as np

    counts = np.asarray(confusion, dtype=float)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classnames)
    size = max(4.0, 0.35 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=classnames, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels=classnames, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color
                    )
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_fewshot(
    curves: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Few-shot probe accuracy against k (log2 axis), zero-shot as a star at k=0 and a dashed
    line; one curve per model (``curves``: label -> a ``run_fewshot`` result)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, (label, result) in enumerate(curves.items()):
        color = f"C{i}"
        ks = [int(k) for k in result["shots"]]
        mean = [100 * result["curve"][str(k)]["mean"] for k in ks]
        std = [100 * result["curve"][str(k)]["std"] for k in ks]
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, color=color, label=f"{label}: probe")
        if result.get("zero_shot") is not None:
            zs = 100 * result["zero_shot"]
            ax.axhline(zs, color=color, linestyle="--", linewidth=1)
            ax.plot(
                [0.5], [zs], marker="*", markersize=14, color=color, label=f"{label}: zero-shot"
            )
        if result.get("chance") is not None and i == 0:
            ax.axhline(100 * result["chance"], color="grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for r in curves.values() for k in r["shots"]})
    ax.set_xticks([0.5, *ticks], labels=["0", *[str(k) for k in ticks]])
    ax.set_xlabel("labelled examples per class (0 = zero-shot)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "zero-shot vs few-shot linear probes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_robustness(
    studies: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """In-distribution vs shifted accuracy (the shift average): probes (the baseline family,
    dots), zero-shot (stars), the fitted baseline and the ideal ``y = x``.
    ``studies``: label -> a ``run_robustness`` result (their baselines are pooled already)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    first = next(iter(studies.values()))
    target = "shift average" if first["shifted"] else first["in_distribution"]
    id_name = first["in_distribution"]
    for i, (label, study) in enumerate(studies.items()):
        color = f"C{i}"
        acc = study["accuracy"]
        probes = [m for m in acc if m != "zero-shot"]
        ax.scatter(
            [100 * acc[m][id_name] for m in probes],
            [100 * acc[m][target] for m in probes],
            color=color,
            alpha=0.6,
            label=f"{label}: source-fitted probes",
        )
        ax.scatter(
            [100 * acc["zero-shot"][id_name]],
            [100 * acc["zero-shot"][target]],
            marker="*",
            s=220,
            color=color,
            edgecolor="black",
            label=f"{label}: zero-shot",
        )
    base = first["baseline"].get(target)
    if base is not None:
        from cliplab.evaluation.robustness import Baseline

        line = Baseline(**base)
        xs = [0.005 + 0.99 * i / 200 for i in range(201)]
        ax.plot(
            [100 * x for x in xs],
            [100 * line.predict(x) for x in xs],
            color="black",
            linewidth=1,
            label=(
                f"baseline: {'logit fit' if base['kind'] == 'least squares' else 'slope 1, assumed'}"
                f" ({base['points']} probes)"
            ),
        )
    ax.plot([0, 100], [0, 100], color="grey", linestyle="--", label="ideal robust (y = x)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"in-distribution accuracy (%): {id_name}")
    ax.set_ylabel(f"accuracy under shift (%): {target}")
    ax.set_title(title or "effective robustness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_prompts(result: Mapping[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Bar chart of zero-shot top-1 per template set."""
    plt = _pyplot()
    names = list(result["results"])
    values = [100 * result["results"][n]["top1"] for n in names]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
    for bar, n in zip(bars, names):
        gain = result["gain_points"][n]
        ax.annotate(
            f"{gain:+.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title(title or f"prompt engineering (gain over {result['reference']}, points)")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- markdown


def zeroshot_markdown(r: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    lines = [
        f"### Zero-shot: {r['dataset']}",
        "",
        f"{r['n']} images, {r['num_classes']} classes (chance {pct(r['chance'])}%, "
        f"always the largest class {pct(r.get('majority'))}%), "
        f"{r['templates']} template(s), e.g. `{r['template_examples'][0]}`.",
        "",
        markdown_table(
            ["top-1 (%)", "top-5 (%)", "mean per-class recall (%)"],
            [[pct(r["top1"]), pct(r["top5"]), pct(r["mean_per_class_recall"])]],
        ),
    ]
    per_class = {k: v for k, v in r["per_class"].items() if v is not None}
    if per_class:
        ranked = sorted(per_class.items(), key=lambda kv: kv[1])
        show = 5 if len(ranked) > 10 else len(ranked)
        lines += [
            "",
            "Per-class accuracy (%)" + (", worst and best 5:" if show < len(ranked) else ":"),
        ]
        picked = ranked[:show] + (ranked[-show:] if show < len(ranked) else [])
        lines += ["", markdown_table(["class", "accuracy (%)"], [[k, pct(v)] for k, v in picked])]
    lines += _images(plots)
    return "\n".join(lines)


def _images(plots: Mapping[str, str] | None) -> list[str]:
    return ["", *[f"![{name}]({file})" for name, file in plots.items()]] if plots else []


def linear_probe_markdown(r: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    m = r["metrics"]
    lines = [
        f"### Linear probe: {r['dataset']}",
        "",
        f"{r['setup']}. L-BFGS logistic regression ({r['backend']}), C = {r['C']:.3g} chosen on "
        f"{r['n_val']} validation images"
        + (
            f" (validation accuracy {pct(r['val_accuracy'])}%)"
            if r["val_accuracy"] is not None
            else ""
        )
        + f" by the paper's coarse-to-fine search ({len(r['search'])} fits), refitted on "
        f"{r['n_train']} images.",
        "",
        markdown_table(
            ["", "top-1 (%)", "top-5 (%)", "mean per-class recall (%)"],
            [
                ["linear probe", pct(m["top1"]), pct(m["top5"]), pct(m["mean_per_class_recall"])],
                ["zero-shot (same test images)", pct(r["zero_shot_top1"]), "", ""],
            ],
        ),
    ]
    return "\n".join(lines + _images(plots))


def matched_label(r: Mapping[str, Any]) -> str:
    """Where zero-shot meets the few-shot curve: "4.0", "≤ 1" or "> 16"."""
    matched, first = r.get("matched_shots"), r["shots"][0]
    if r.get("zero_shot") is None:
        return "-"
    if matched is None:
        return f"> {r['shots'][-1]}"
    if matched == first and r["curve"][str(first)]["mean"] > r["zero_shot"]:
        return f"≤ {first}"
    return f"{matched:.1f}"


def fewshot_markdown(r: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    rows = [
        [str(k), pct(r["curve"][str(k)]["mean"]), pct(r["curve"][str(k)]["std"])]
        for k in r["shots"]
    ]
    rows.insert(0, ["0 (zero-shot)", pct(r["zero_shot"]), ""])
    matched = r.get("matched_shots")
    first = r["shots"][0]
    if matched is None:
        verdict = f"zero-shot beats every probe up to {r['shots'][-1]} shots"
    elif matched == first and r["curve"][str(first)]["mean"] > (r["zero_shot"] or 0):
        verdict = f"a {first}-shot probe already beats zero-shot"
    else:
        verdict = f"zero-shot matches a {matched:.1f}-shot probe (log2 interpolation)"
    lines = [
        f"### Zero-shot vs few-shot: {r['dataset']}",
        "",
        f"{r['setup']}. {len(r['seeds'])} seeds per k; C chosen per probe on a validation split "
        f"held out of the training pool. Chance {pct(r['chance'])}%. **{verdict}**.",
        "",
        markdown_table(["examples per class", "top-1 mean (%)", "std (points)"], rows),
    ]
    return "\n".join(lines + _images(plots))


def retrieval_markdown(r: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    ks = sorted(int(k.split("@")[1]) for k in r if k.startswith("image_to_text_R@"))
    rows = [
        [
            "image -> text",
            *[pct(r[f"image_to_text_R@{k}"]) for k in ks],
            f"{r['image_to_text_median_rank']:.0f}",
        ],
        [
            "text -> image",
            *[pct(r[f"text_to_image_R@{k}"]) for k in ks],
            f"{r['text_to_image_median_rank']:.0f}",
        ],
    ]
    lines = [
        f"### Retrieval: {r['dataset']}",
        "",
        f"{r['n_images']} images, {r['n_texts']} captions (chance R@1: image->text "
        f"{pct(1 / r['n_texts'], 2)}%, text->image {pct(1 / r['n_images'], 2)}%).",
        "",
        markdown_table(["", *[f"R@{k} (%)" for k in ks], "median rank"], rows),
    ]
    return "\n".join(lines + _images(plots))


def prompts_markdown(r: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    rows = [
        [
            name,
            v.get("templates", ""),
            pct(v["top1"]),
            pct(v["top5"]),
            f"{r['gain_points'][name]:+.1f}",
        ]
        for name, v in r["results"].items()
    ]
    lines = [
        f"### Prompt engineering: {r['dataset']}",
        "",
        "Zero-shot accuracy with each template set; gain over the bare label in points "
        '(paper, ImageNet: +1.3 for "a photo of a {}.", about +5 with engineering and ensembling).',
        "",
        markdown_table(["templates", "count", "top-1 (%)", "top-5 (%)", "gain (points)"], rows),
    ]
    return "\n".join(lines + _images(plots))


def robustness_markdown(r: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    sets = [r["in_distribution"], *r["shifted"]] + (["shift average"] if r["shifted"] else [])
    rows = [[model, *[pct(acc.get(s)) for s in sets]] for model, acc in r["accuracy"].items()]
    targets = [*r["shifted"], "shift average"] if r["shifted"] else []
    er_rows = []
    for model in r["effective_robustness"]:
        er = r["effective_robustness"][model]
        gc = r["gap_closed"][model]
        er_rows.append(
            [
                model,
                *[
                    f"{100 * er[t]:+.1f} ({pct(gc[t], 0) if gc[t] is not None else '-'}%)"
                    for t in targets
                ],
            ]
        )
    base = r["baseline"].get("shift average", {})
    set_lines = [
        f"- {name}: {v['n']} images, {v['classes']} classes"
        + (f", {v['dropped']} images of classes the source lacks dropped" if v["dropped"] else "")
        for name, v in r["sets"].items()
    ]
    lines = [
        f"### Robustness to distribution shift: {r['source']}",
        "",
        f"{r['setup']}. Probe C = {r['probe']['C']:.3g}.",
        "",
        *set_lines,
        "",
        "Top-1 accuracy (%); logits restricted to each set's classes:",
        "",
        markdown_table(["model", *sets], rows),
    ]
    if targets:
        lines += [
            "",
            "Effective robustness (points above the baseline; share of the gap to the ideal "
            f"y = x line closed). Baseline: {base.get('kind', '-')} over {base.get('points', 0)} "
            "source-fitted probes in logit space (the paper fits ~200 ImageNet models).",
        ]
        if base.get("kind") != "least squares":
            lines.append(
                "**The baseline's slope is assumed, not fitted** (its probes are too few or "
                "span too little in-distribution accuracy): read these numbers as indicative."
            )
        lines += ["", markdown_table(["model", *targets], er_rows)]
    return "\n".join(lines + _images(plots))


_SECTIONS = {
    "zeroshot": zeroshot_markdown,
    "linear-probe": linear_probe_markdown,
    "fewshot": fewshot_markdown,
    "retrieval": retrieval_markdown,
    "prompts": prompts_markdown,
    "robustness": robustness_markdown,
}


def section_markdown(result: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """The Markdown section of any protocol's result (by its ``protocol`` key)."""
    return _SECTIONS[result["protocol"]](result, plots)


def make_plots(result: Mapping[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    """The plots that suit a result, written into ``out_dir``; name -> file name."""
    if not have_matplotlib():
        return {}
    plots: dict[str, str] = {}
    kind = result["protocol"]
    if (
        kind == "zeroshot"
        and "confusion" in result
        and result["num_classes"] <= MAX_CONFUSION_CLASSES
    ):
        name = f"{stem}-confusion.png"
        plot_confusion(
            result["confusion"],
            list(result["per_class"]),
            out_dir / name,
            f"zero-shot confusion: {result['dataset']}",
        )
        plots["confusion matrix"] = name
    elif kind == "fewshot":
        name = f"{stem}-fewshot.png"
        plot_fewshot(
            {"model": result}, out_dir / name, f"zero-shot vs few-shot: {result['dataset']}"
        )
        plots["few-shot curve"] = name
    elif kind == "prompts":
        name = f"{stem}-prompts.png"
        plot_prompts(result, out_dir / name)
        plots["prompt ablation"] = name
    elif kind == "robustness":
        name = f"{stem}-robustness.png"
        plot_robustness({"model": result}, out_dir / name)
        plots["robustness"] = name
    return plots


def write_outputs(
    result: Mapping[str, Any], out_dir: str | os.PathLike[str], stem: str
) -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` and the PNG plots of one result in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(result, out, stem)
    files = {"json": write_json(out / f"{stem}.json", result)}
    md = out / f"{stem}.md"
    md.write_text(section_markdown(result, plots) + "\n", encoding="utf-8")
    files["markdown"] = md
    files.update({name: out / file for name, file in plots.items()})
    return files


# --------------------------------------------------------------------------- multi-model report


def _by_protocol(
    runs: Sequence[Mapping[str, Any]], protocol: str
) -> dict[str, list[tuple[str, Mapping[str, Any]]]]:
    """dataset key -> [(model label, result)] for one protocol."""
    out: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for run in runs:
        for r in run["results"]:
            if r["protocol"] == protocol:
                key = r.get("dataset") or r.get("source")
                out.setdefault(key, []).append((run["label"], r))
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()[:60] or "x"


def write_report(
    runs: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    title: str = "cliplab evaluation report",
) -> Path:
    """One Markdown report (``report.md``, plots beside it, ``report.json``) for several models.

    ``runs``: ``{"label", "info": {...}, "results": [protocol results]}`` per model, as
    ``cliplab eval report`` builds them. Robustness studies are rescored against one
    baseline pooled over every model's probes.
    """
    from cliplab.evaluation.robustness import pool_baselines

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots_ok = have_matplotlib()
    runs = [dict(r, results=list(r["results"])) for r in runs]
    robust = [
        (i, j)
        for i, run in enumerate(runs)
        for j, r in enumerate(run["results"])
        if r["protocol"] == "robustness"
    ]
    by_source: dict[str, list[tuple[int, int]]] = {}
    for i, j in robust:
        by_source.setdefault(runs[i]["results"][j]["source"], []).append((i, j))
    for positions in by_source.values():
        for i, j in positions:
            for p in runs[i]["results"][j]["baseline_points"]:
                p.setdefault("checkpoint", runs[i]["label"])
        pooled = pool_baselines([runs[i]["results"][j] for i, j in positions])
        for (i, j), study in zip(positions, pooled):
            runs[i]["results"][j] = study

    lines = [f"# {title}", ""]
    lines += ["## Models", ""]
    info_keys = sorted({k for run in runs for k in run.get("info", {})})
    lines.append(
        markdown_table(
            ["model", *info_keys],
            [[run["label"], *[run.get("info", {}).get(k, "") for k in info_keys]] for run in runs],
        )
    )

    zs = _by_protocol(runs, "zeroshot")
    if zs:
        lines += ["", "## Zero-shot classification", ""]
        for dataset, items in zs.items():
            r0 = items[0][1]
            lines += [
                f"### {dataset}",
                "",
                f"{r0['n']} images, {r0['num_classes']} classes, chance {pct(r0['chance'])}%, "
                f"always the largest class {pct(r0.get('majority'))}%, {r0['templates']} template(s).",
                "",
            ]
            lines.append(
                markdown_table(
                    ["model", "top-1 (%)", "top-5 (%)", "mean per-class recall (%)"],
                    [
                        [m, pct(r["top1"]), pct(r["top5"]), pct(r["mean_per_class_recall"])]
                        for m, r in items
                    ],
                )
            )
            if plots_ok:
                for m, r in items:
                    if "confusion" in r and r["num_classes"] <= MAX_CONFUSION_CLASSES:
                        name = f"confusion-{_slug(m)}-{_slug(dataset)}.png"
                        plot_confusion(
                            r["confusion"], list(r["per_class"]), out / name, f"{m}: {dataset}"
                        )
                        lines += ["", f"![confusion {m} {dataset}]({name})"]
            lines.append("")

    pr = _by_protocol(runs, "prompts")
    if pr:
        lines += [
            "",
            "## Prompt engineering",
            "",
            "Zero-shot top-1 (%) per template set; gain over the bare label in points (paper, ImageNet: +1.3 for one template, about +5 with ensembling).",
            "",
        ]
        for dataset, items in pr.items():
            names = list(items[0][1]["results"])
            lines += [f"### {dataset}", ""]
            lines.append(
                markdown_table(
                    [
                        "model",
                        *[f"{n} ({items[0][1]['results'][n].get('templates', '')})" for n in names],
                    ],
                    [
                        [
                            m,
                            *[
                                f"{pct(r['results'][n]['top1'])} ({r['gain_points'][n]:+.1f})"
                                for n in names
                            ],
                        ]
                        for m, r in items
                    ],
                )
            )
            if plots_ok:
                name = f"prompts-{_slug(dataset)}.png"
                plot_prompts(items[-1][1], out / name, f"{items[-1][0]}: {dataset}")
                lines += ["", f"![prompts {dataset}]({name})"]
            lines.append("")

    lp = _by_protocol(runs, "linear-probe")
    if lp:
        lines += ["", "## Linear probe", ""]
        for dataset, items in lp.items():
            lines += [f"### {dataset}", "", items[0][1]["setup"] + ".", ""]
            lines.append(
                markdown_table(
                    [
                        "model",
                        "probe top-1 (%)",
                        "probe mean per-class recall (%)",
                        "zero-shot top-1 (%)",
                        "C",
                    ],
                    [
                        [
                            m,
                            pct(r["metrics"]["top1"]),
                            pct(r["metrics"]["mean_per_class_recall"]),
                            pct(r["zero_shot_top1"]),
                            f"{r['C']:.3g}",
                        ]
                        for m, r in items
                    ],
                )
            )
            lines.append("")

    fs = _by_protocol(runs, "fewshot")
    if fs:
        lines += ["", "## Zero-shot vs few-shot linear probes", ""]
        for dataset, items in fs.items():
            shots = items[0][1]["shots"]
            lines += [
                f"### {dataset}",
                "",
                items[0][1]["setup"] + f"; {len(items[0][1]['seeds'])} seeds (mean ± std).",
                "",
            ]
            rows = []
            for m, r in items:
                rows.append(
                    [
                        m,
                        pct(r["zero_shot"]),
                        *[
                            f"{pct(r['curve'][str(k)]['mean'])} ± {100 * r['curve'][str(k)]['std']:.1f}"
                            for k in shots
                        ],
                        matched_label(r),
                    ]
                )
            lines.append(
                markdown_table(
                    [
                        "model",
                        "zero-shot",
                        *[f"{k}-shot" for k in shots],
                        "zero-shot = k-shot at k",
                    ],
                    rows,
                )
            )
            if plots_ok:
                name = f"fewshot-{_slug(dataset)}.png"
                plot_fewshot(dict(items), out / name, f"zero-shot vs few-shot: {dataset}")
                lines += ["", f"![few-shot {dataset}]({name})"]
            lines.append("")

    rt = _by_protocol(runs, "retrieval")
    if rt:
        lines += ["", "## Retrieval", ""]
        for dataset, items in rt.items():
            r0 = items[0][1]
            lines += [
                f"### {dataset}",
                "",
                f"{r0['n_images']} images, {r0['n_texts']} captions.",
                "",
            ]
            lines.append(
                markdown_table(
                    [
                        "model",
                        *[f"I→T R@{k}" for k in (1, 5, 10)],
                        *[f"T→I R@{k}" for k in (1, 5, 10)],
                        "mean",
                    ],
                    [
                        [
                            m,
                            *[pct(r.get(f"image_to_text_R@{k}")) for k in (1, 5, 10)],
                            *[pct(r.get(f"text_to_image_R@{k}")) for k in (1, 5, 10)],
                            pct(r["mean_recall"]),
                        ]
                        for m, r in items
                    ],
                )
            )
            lines.append("")

    rb = _by_protocol(runs, "robustness")
    if rb:
        lines += ["", "## Robustness to distribution shift", ""]
        for source, items in rb.items():
            lines += [
                robustness_markdown(items[0][1]).replace(
                    "### Robustness to distribution shift", f"### {items[0][0]}"
                ),
                "",
            ]
            for m, r in items[1:]:
                lines += [
                    robustness_markdown(r).replace(
                        "### Robustness to distribution shift", f"### {m}"
                    ),
                    "",
                ]
            if plots_ok:
                name = f"robustness-{_slug(source)}.png"
                plot_robustness(dict(items), out / name, f"effective robustness: {source}")
                lines += [f"![robustness {source}]({name})", ""]

    md = out / "report.md"
    md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    write_json(out / "report.json", runs)
    return md
