"""Linear probe (the paper's appendix A.3): logistic regression on frozen image features, its
regularisation searched on a validation split, beside zero-shot on the same test images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cliplab.data.evalsets import ClassificationSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.metrics import classification_metrics
from cliplab.evaluation.output import images_markdown, markdown_table, pct
from cliplab.evaluation.probe import ProbeOptions, linear_probe, probe_data
from cliplab.evaluation.protocol import Input, Protocol, Result, Row, option
from cliplab.evaluation.protocols.zeroshot import zero_shot_features


@dataclass(frozen=True)
class Options(ProbeOptions):
    recipe: str = option(
        "openai",
        "openai (the paper's L-BFGS logistic regression, C searched) or clip_benchmark "
        "(CLIP_benchmark's AdamW linear layer: reproduces its numbers)",
        choices=("openai", "clip_benchmark"),
    )
    lr: float = option(0.1, "clip_benchmark recipe: AdamW learning rate")
    epochs: int = option(10, "clip_benchmark recipe: passes over the training features")
    probe_batch_size: int = option(64, "clip_benchmark recipe: batch size")


@dataclass
class LinearProbeResult(Result):
    protocol: ClassVar[str] = "linear-probe"

    dataset: str
    backend: str
    setup: str
    zero_shot_top1: float
    C: float
    val_accuracy: float | None
    n_train: int
    n_val: int
    metrics: dict[str, Any] = field(default_factory=dict)
    search: list[dict[str, float]] = field(default_factory=list)
    recipe: str = "openai"
    weight_decay: float | None = None  # the clip_benchmark recipe's

    @property
    def top1(self) -> float:
        return float(self.metrics["top1"])

    def rows(self) -> list[Row]:
        n = self.metrics.get("num_classes")
        chance = 1 / n if n else None
        return [
            Row(self.dataset, "linear probe", "top-1", self.top1, chance, "all training images")
        ]

    def scalars(self) -> dict[str, float]:
        return {"top1": self.top1, "zero_shot_top1": self.zero_shot_top1}

    def summary(self) -> str:
        how = f"C={self.C:.3g}" if self.recipe == "openai" else (
            f"CLIP_benchmark's AdamW probe, weight decay {self.weight_decay:.3g}"
        )  # fmt: skip
        return (
            f"linear probe {self.dataset}: top-1 {pct(self.top1)}% ({how}); "
            f"zero-shot on the same images {pct(self.zero_shot_top1)}%"
        )

    def markdown(self, plots: Mapping[str, str] | None = None) -> str:
        m = self.metrics
        val = (
            f" (validation accuracy {pct(self.val_accuracy)}%)"
            if self.val_accuracy is not None
            else ""
        )
        how = (
            f"C = {self.C:.3g} chosen on {self.n_val} validation images{val} by the paper's "
            f"coarse-to-fine search ({len(self.search)} fits), refitted on {self.n_train} images"
            if self.search
            else f"C = {self.C:.3g} fixed, fitted on {self.n_train} images"
        )
        method = f"L-BFGS logistic regression ({self.backend}), {how}"
        if self.recipe == "clip_benchmark":
            method = (
                f"CLIP_benchmark's probe: a linear layer trained with AdamW on {self.n_train} "
                f"images, weight decay {self.weight_decay:.3g}"
            )
        lines = [
            f"### Linear probe: {self.dataset}",
            "",
            f"{self.setup}. {method}.",
            "",
            markdown_table(
                ["", "top-1 (%)", "top-5 (%)", "mean per-class recall (%)"],
                [
                    [
                        "linear probe",
                        pct(m["top1"]),
                        pct(m["top5"]),
                        pct(m["mean_per_class_recall"]),
                    ],
                    ["zero-shot (same test images)", pct(self.zero_shot_top1), "", ""],
                ],
            ),
        ]
        return "\n".join(lines + images_markdown(dict(plots or {})))


def run(
    store: FeatureStore,
    options: Options,
    *,
    dataset: ClassificationSet,
    train: ClassificationSet | None = None,
) -> LinearProbeResult:
    """A full linear probe (C searched on a validation split of the training features) with
    zero-shot accuracy on the same test images for comparison."""
    data = probe_data(store, dataset, train, seed=options.seed)
    if options.recipe == "clip_benchmark":
        return _clip_benchmark(store, options, dataset, data)
    result = linear_probe(
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        num_classes=dataset.num_classes,
        classnames=dataset.classnames,
        C=options.C,
        seed=options.seed,
        backend=options.backend,  # type: ignore[arg-type]
        max_iter=options.max_iter,
    )
    logits, _ = zero_shot_features(store, dataset, options.templates, data.test_x)
    zs = classification_metrics(logits, data.test_y)["top1"]
    return LinearProbeResult(
        dataset=dataset.name,
        backend=options.backend,
        setup=data.note,
        zero_shot_top1=zs,
        C=result.C,
        val_accuracy=result.val_accuracy,
        n_train=result.n_train,
        n_val=result.n_val,
        metrics=result.metrics,
        search=result.search,
    )


def _clip_benchmark(
    store: FeatureStore, options: Options, dataset: ClassificationSet, data: Any
) -> LinearProbeResult:
    """CLIP_benchmark's probe (:mod:`cliplab.evaluation.adamw_probe`) on the same features."""
    from cliplab.evaluation.adamw_probe import adamw_probe

    probe = adamw_probe(
        data.train_x, data.train_y, data.test_x, data.test_y, lr=options.lr,
        epochs=options.epochs, batch_size=options.probe_batch_size, seed=options.seed,
    )  # fmt: skip
    metrics = classification_metrics(probe.logits, probe.targets, dataset.classnames, ties="topk")
    logits, _ = zero_shot_features(store, dataset, options.templates, data.test_x)
    return LinearProbeResult(
        dataset=dataset.name,
        backend="AdamW (CLIP_benchmark)",
        setup=data.note,
        zero_shot_top1=classification_metrics(logits, data.test_y)["top1"],
        C=float("nan"),
        val_accuracy=None,
        n_train=probe.n_train,
        n_val=0,
        metrics=metrics,
        search=probe.search,
        recipe="clip_benchmark",
        weight_decay=probe.weight_decay,
    )


def compare(items: Sequence[tuple[str, Any]], out_dir: Path) -> list[str]:
    r0: LinearProbeResult = items[0][1]
    table = markdown_table(
        ["model", "probe top-1 (%)", "probe mean per-class recall (%)", "zero-shot top-1 (%)", "C"],
        [
            [
                m,
                pct(r.top1),
                pct(r.metrics["mean_per_class_recall"]),
                pct(r.zero_shot_top1),
                f"{r.C:.3g}",
            ]
            for m, r in items
        ],
    )
    return [f"### {r0.dataset}", "", r0.setup + ".", "", table, ""]


PROTOCOL = Protocol(
    name="linear-probe",
    title="Linear probe",
    help="logistic regression on frozen features",
    inputs=(
        Input("dataset", "classification", "test set directory"),
        Input("train", "classification", "training set (default: split the test set)", False),
    ),
    options=Options,
    result=LinearProbeResult,
    run=run,
    compare=compare,
)
