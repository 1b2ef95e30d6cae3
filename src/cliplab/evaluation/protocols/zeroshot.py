"""Zero-shot classification (the paper's section 3.1): class names and prompt templates become
a classifier; top-1, top-5, mean per-class recall and a confusion matrix on a labelled set."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from cliplab.data.evalsets import ClassificationSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.metrics import TIES, classification_metrics
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
from cliplab.templates import resolve_templates
from cliplab.zeroshot import ZeroShotHead

#: Confusion matrices are drawn for at most this many classes.
MAX_CONFUSION_CLASSES = 30

TEMPLATES_HELP = (
    "template set: 'dataset' (the set's own, default), a bundled name (photo, imagenet80, ...) "
    "or a JSON file (in the library and configs, also a list of templates)"
)


@dataclass(frozen=True)
class Options:
    templates: str | Sequence[str] | None = option(None, TEMPLATES_HELP)
    ties: str = option(
        "strict",
        "tie rule: strict (ties count against the model) or topk (CLIP_benchmark's: torch.topk "
        "breaks ties; reproduces its numbers)",
        choices=TIES,
    )


@dataclass
class ZeroShotResult(Result):
    protocol: ClassVar[str] = "zeroshot"

    dataset: str
    n: int
    num_classes: int
    templates: int
    template_examples: list[str]
    chance: float
    majority: float
    top1: float
    top5: float
    mean_per_class_recall: float
    per_class: dict[str, float | None] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    members: int = 0  # member names the classes were also scored by (class_members)

    def rows(self) -> list[Row]:
        rows = [Row(self.dataset, "zero-shot", "top-1", self.top1, 1 / self.num_classes)]
        if self.num_classes > 5:
            rows.append(Row(self.dataset, "zero-shot", "top-5", self.top5, 5 / self.num_classes))
        return rows

    def scalars(self) -> dict[str, float]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "mean_per_class_recall": self.mean_per_class_recall,
        }

    def summary(self) -> str:
        return (
            f"zero-shot {self.dataset}: top-1 {pct(self.top1)}%, top-5 {pct(self.top5)}%, "
            f"mean per-class recall {pct(self.mean_per_class_recall)}% "
            f"({self.n} images, {self.num_classes} classes, chance {pct(self.chance)}%)"
        )

    def markdown(self, plots: Mapping[str, str] | None = None) -> str:
        lines = [
            f"### Zero-shot: {self.dataset}",
            "",
            f"{self.n} images, {self.num_classes} classes (chance {pct(self.chance)}%, "
            f"always the largest class {pct(self.majority)}%), "
            f"{self.templates} template(s), e.g. `{self.template_examples[0]}`"
            + (
                f"; each class also scored by its members ({self.members} names in all)."
                if self.members
                else "."
            ),
            "",
            markdown_table(
                ["top-1 (%)", "top-5 (%)", "mean per-class recall (%)"],
                [[pct(self.top1), pct(self.top5), pct(self.mean_per_class_recall)]],
            ),
        ]
        per_class = {k: v for k, v in self.per_class.items() if v is not None}
        if per_class:
            ranked = sorted(per_class.items(), key=lambda kv: kv[1])
            show = 5 if len(ranked) > 10 else len(ranked)
            lines += [
                "",
                "Per-class accuracy (%)" + (", worst and best 5:" if show < len(ranked) else ":"),
            ]
            picked = ranked[:show] + (ranked[-show:] if show < len(ranked) else [])
            table = markdown_table(["class", "accuracy (%)"], [[k, pct(v)] for k, v in picked])
            lines += ["", table]
        return "\n".join(lines + images_markdown(dict(plots or {})))

    def plots(self, out_dir: Path, stem: str) -> dict[str, str]:
        if self.confusion is None or self.num_classes > MAX_CONFUSION_CLASSES:
            return {}
        name = f"{stem}-confusion.png"
        title = f"zero-shot confusion: {self.dataset}"
        plot_confusion(self.confusion, list(self.per_class), out_dir / name, title)
        return {"confusion matrix": name}


def plot_confusion(
    confusion: Sequence[Sequence[int]],
    classnames: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """A row-normalised confusion matrix (true class down, prediction across)."""
    plt = pyplot()
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
    return save_figure(fig, path)


def majority_fraction(labels: Sequence[int]) -> float:
    """Accuracy of always answering the most frequent class (the floor for imbalanced sets)."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long))
    return float(counts.max()) / max(1, len(labels))


def zero_shot_features(
    store: FeatureStore,
    dataset: ClassificationSet,
    templates: str | Sequence[str] | None = None,
    features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Zero-shot logits (N, C) of ``dataset`` (or of ``features`` of its images) with the
    model's temperature, and the templates used. Where the set has ``class_members``, a class's
    logit is the largest of its own name's and its members' (each a template ensemble)."""
    chosen = resolve_templates(templates, dataset.templates)
    x = store.dataset(dataset) if features is None else features
    head = ZeroShotHead.build(store, dataset.classnames, chosen, dataset.class_members)
    return head.logits(x), chosen


def run(store: FeatureStore, options: Options, *, dataset: ClassificationSet) -> ZeroShotResult:
    """Zero-shot metrics of the store's model on ``dataset`` (plus chance level)."""
    logits, chosen = zero_shot_features(store, dataset, options.templates)
    m = classification_metrics(logits, dataset.labels, dataset.classnames, ties=options.ties)
    return ZeroShotResult(
        dataset=dataset.name,
        n=m["n"],
        num_classes=m["num_classes"],
        templates=len(chosen),
        template_examples=chosen[:3],
        chance=1.0 / dataset.num_classes,
        majority=majority_fraction(dataset.labels),
        top1=m["top1"],
        top5=m["top5"],
        mean_per_class_recall=m["mean_per_class_recall"],
        per_class=m["per_class"],
        confusion=m.get("confusion"),
        members=sum(len(ms) for ms in dataset.class_members or ()),
    )


def choose_zero_shot(
    store: FeatureStore, candidates: Mapping[str, ClassificationSet]
) -> tuple[str, dict[str, float]]:
    """The candidate with the best zero-shot top-1 (the first on a tie), and every candidate's
    score. Candidates are one validation set set up in different ways (its templates, its
    ``class_members``): the zero-shot set-up is chosen on validation data, never on the test
    set it is then used on."""
    if not candidates:
        raise ValueError("no candidate zero-shot set-ups to choose from")
    scores = {}
    for key, dataset in candidates.items():
        logits, _ = zero_shot_features(store, dataset)
        scores[key] = classification_metrics(logits, dataset.labels, dataset.classnames)["top1"]
    best = max(scores, key=lambda k: scores[k])  # max keeps the first of equal scores
    return best, scores


def compare(items: Sequence[tuple[str, Any]], out_dir: Path) -> list[str]:
    """Several models on one set: a table, and a confusion matrix per model when small."""
    r0: ZeroShotResult = items[0][1]
    lines = [
        f"### {r0.dataset}",
        "",
        f"{r0.n} images, {r0.num_classes} classes, chance {pct(r0.chance)}%, "
        f"always the largest class {pct(r0.majority)}%, {r0.templates} template(s).",
        "",
        markdown_table(
            ["model", "top-1 (%)", "top-5 (%)", "mean per-class recall (%)"],
            [[m, pct(r.top1), pct(r.top5), pct(r.mean_per_class_recall)] for m, r in items],
        ),
    ]
    if have_matplotlib():
        for m, r in items:
            if r.confusion is not None and r.num_classes <= MAX_CONFUSION_CLASSES:
                name = f"confusion-{slug(m)}-{slug(r.dataset)}.png"
                plot_confusion(r.confusion, list(r.per_class), out_dir / name, f"{m}: {r.dataset}")
                lines += ["", f"![confusion {m} {r.dataset}]({name})"]
    return [*lines, ""]


PROTOCOL = Protocol(
    name="zeroshot",
    title="Zero-shot classification",
    help="zero-shot classification from class names",
    inputs=(Input("dataset", "classification", "classification set directory"),),
    options=Options,
    result=ZeroShotResult,
    run=run,
    compare=compare,
)
