"""The prompt-engineering ablation (the paper's section 3.1.4, Figure 4).

Zero-shot accuracy of one model on one set with several template sets: the bare label,
"a photo of a {}.", the set's own templates (task context) and an ensemble (OpenAI's 80
ImageNet templates by default). The paper measured +1.3 points for "a photo of a {}." over
the bare label on ImageNet, and about +5 for prompt engineering with ensembling.

Prompt *engineering* is a choice, so it is made on held-out data: given a ``validation`` set
(same class vocabulary or at least the same kind of names, never the test images), every
candidate (the sets above and each of the set's own templates alone) is scored there, the
best is taken, and its accuracy on the test set is reported as ``chosen``: the gain a user
who engineers prompts would see, not the best of several test figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from cliplab.data.evalsets import ClassificationSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.metrics import classification_metrics
from cliplab.evaluation.output import (
    have_matplotlib,
    images_markdown,
    markdown_table,
    pct,
    pyplot,
    save_figure,
    slug,
)
from cliplab.evaluation.protocol import Input, Protocol, Result, Row, option
from cliplab.evaluation.protocols.zeroshot import choose_zero_shot
from cliplab.templates import load_templates
from cliplab.zeroshot import zero_shot_logits


@dataclass(frozen=True)
class Options:
    ensemble: str = option("imagenet80", "template set of the ensemble row")


def default_template_sets(
    dataset_templates: Sequence[str] | None = None, ensemble: str | Sequence[str] = "imagenet80"
) -> dict[str, list[str]]:
    """``bare``, ``photo``, ``dataset`` (if the set has templates) and ``ensemble``."""
    sets = {"bare": load_templates("bare"), "photo": load_templates("photo")}
    if dataset_templates:
        sets["dataset"] = list(dataset_templates)
    sets["ensemble"] = load_templates(ensemble) if isinstance(ensemble, str) else list(ensemble)
    return sets


def candidate_template_sets(
    dataset_templates: Sequence[str] | None = None, ensemble: str | Sequence[str] = "imagenet80"
) -> dict[str, list[str]]:
    """What prompt engineering chooses between: :func:`default_template_sets` and each of
    the set's own templates alone (``'one: {} emoji'``), in that order (ties go to the first,
    so the bare label wins a tie)."""
    sets = default_template_sets(dataset_templates, ensemble)
    for t in dataset_templates or ():
        sets.setdefault(f"one: {t}", [t])
    return sets


def prompt_ablation(
    image_features: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    classifiers: Mapping[str, torch.Tensor],
    *,
    template_counts: Mapping[str, int] | None = None,
    reference: str = "bare",
) -> dict[str, Any]:
    """Accuracy with each zero-shot classifier and the gain over ``reference`` in points.

    ``classifiers`` maps a template-set name to its zero-shot weights (C, D), all for the
    same class names. Returns ``{"results": {name: {top1, top5, mean_per_class_recall,
    templates}}, "gain_points": {name: 100 * (top1 - reference top1)}, "reference": ...}``.
    """
    results: dict[str, dict[str, Any]] = {}
    for name, weights in classifiers.items():
        m = classification_metrics(zero_shot_logits(image_features, weights), labels)
        results[name] = {k: m[k] for k in ("top1", "top5", "mean_per_class_recall")}
        if template_counts is not None and name in template_counts:
            results[name]["templates"] = template_counts[name]
    if reference not in results:
        reference = next(iter(results))
    base = results[reference]["top1"]
    gains = {name: 100.0 * (r["top1"] - base) for name, r in results.items()}
    return {"reference": reference, "results": results, "gain_points": gains}


@dataclass
class PromptsResult(Result):
    protocol: ClassVar[str] = "prompts"

    dataset: str
    reference: str
    results: dict[
        str, dict[str, Any]
    ]  # template set -> {top1, top5, mean_per_class_recall, templates}
    gain_points: dict[str, float]
    # prompt engineering on held-out data: the candidate chosen on ``validation`` (its test
    # figures are ``results["chosen"]``) and every candidate's validation top-1
    chosen: str = ""
    validation: str = ""
    validation_top1: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[Row]:
        return [
            Row(self.dataset, f"zero-shot, {name} templates", "top-1", r["top1"], None)
            for name, r in self.results.items()
        ]

    def scalars(self) -> dict[str, float]:
        return {f"{name}_top1": r["top1"] for name, r in self.results.items()}

    def summary(self) -> str:
        parts = [
            f"{name} {pct(v['top1'])}% ({self.gain_points[name]:+.1f})"
            for name, v in self.results.items()
        ]
        return f"prompts {self.dataset}: " + ", ".join(parts)

    def markdown(self, plots: Mapping[str, str] | None = None) -> str:
        rows = [
            [
                name,
                v.get("templates", ""),
                pct(v["top1"]),
                pct(v["top5"]),
                f"{self.gain_points[name]:+.1f}",
            ]
            for name, v in self.results.items()
        ]
        lines = [
            f"### Prompt engineering: {self.dataset}",
            "",
            "Zero-shot accuracy with each template set; gain over the bare label in points "
            '(paper, ImageNet: +1.3 for "a photo of a {}.", about +5 with engineering and '
            "ensembling).",
            "",
            markdown_table(["templates", "count", "top-1 (%)", "top-5 (%)", "gain (points)"], rows),
        ]
        if self.chosen:
            scores = ", ".join(f"{n} {pct(v)}" for n, v in self.validation_top1.items())
            lines += [
                "",
                f"`chosen`: the candidate with the best top-1 on {self.validation} "
                f"(validation, never the test images): '{self.chosen}' (validation top-1 %: "
                f"{scores}).",
            ]
        return "\n".join(lines + images_markdown(dict(plots or {})))

    def plots(self, out_dir: Path, stem: str) -> dict[str, str]:
        name = f"{stem}-prompts.png"
        plot_prompts(self, out_dir / name)
        return {"prompt ablation": name}


def plot_prompts(result: PromptsResult, path: str | os.PathLike[str], title: str = "") -> Path:
    """Bar chart of zero-shot top-1 per template set, gains over the reference above."""
    plt = pyplot()
    names = list(result.results)
    values = [100 * result.results[n]["top1"] for n in names]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
    for bar, n in zip(bars, names):
        ax.annotate(
            f"{result.gain_points[n]:+.1f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title(title or f"prompt engineering (gain over {result.reference}, points)")
    fig.tight_layout()
    return save_figure(fig, path)


def run(
    store: FeatureStore,
    options: Options,
    *,
    dataset: ClassificationSet,
    validation: ClassificationSet | None = None,
) -> PromptsResult:
    """The ablation: bare label, one template, the set's own, an ensemble; with
    ``validation``, also the candidate chosen there (:func:`choose_zero_shot`) as ``chosen``."""
    sets = default_template_sets(dataset.templates, options.ensemble)
    chosen, scores = "", {}
    if validation is not None:
        candidates = candidate_template_sets(dataset.templates, options.ensemble)
        chosen, scores = choose_zero_shot(
            store, {k: replace(validation, templates=t) for k, t in candidates.items()}
        )
        sets["chosen"] = candidates[chosen]
    classifiers = {name: store.classifier(dataset.classnames, t) for name, t in sets.items()}
    r = prompt_ablation(
        store.dataset(dataset),
        dataset.labels,
        classifiers,
        template_counts={name: len(t) for name, t in sets.items()},
    )
    return PromptsResult(
        dataset.name,
        r["reference"],
        r["results"],
        r["gain_points"],
        chosen=chosen,
        validation=validation.name if validation is not None else "",
        validation_top1=scores,
    )


def compare(items: Sequence[tuple[str, Any]], out_dir: Path) -> list[str]:
    r0: PromptsResult = items[0][1]
    names = list(r0.results)
    table = markdown_table(
        ["model", *[f"{n} ({r0.results[n].get('templates', '')})" for n in names]],
        [
            [m, *[f"{pct(r.results[n]['top1'])} ({r.gain_points[n]:+.1f})" for n in names]]
            for m, r in items
        ],
    )
    lines = [f"### {r0.dataset}", "", table]
    if have_matplotlib():
        label, last = items[-1]
        name = f"prompts-{slug(r0.dataset)}.png"
        plot_prompts(last, out_dir / name, f"{label}: {r0.dataset}")
        lines += ["", f"![prompts {r0.dataset}]({name})"]
    return [*lines, ""]


PROTOCOL = Protocol(
    name="prompts",
    title="Prompt engineering",
    help="prompt-engineering ablation",
    inputs=(
        Input("dataset", "classification", "classification set directory"),
        Input(
            "validation",
            "classification",
            "held-out set the templates are chosen on (prompt engineering without the test)",
            required=False,
        ),
    ),
    options=Options,
    result=PromptsResult,
    run=run,
    compare=compare,
)
