"""k-nearest-neighbour classification on frozen image features (Wu et al. 2018; DINO's
protocol): each test image votes with its ``k`` most similar training images, weighted by
``exp(cosine / temperature)``. No fitting and no hyper-parameter search, so it is a cheap
check of how well a model's features cluster by class, beside the linear probe.

This file is the example of ``docs/adding-a-protocol.md``: options, a typed result, ``run``
and one ``Protocol``; the registry lists it with one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cliplab.data.evalsets import ClassificationSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.metrics import classification_metrics
from cliplab.evaluation.output import images_markdown, markdown_table, pct
from cliplab.evaluation.probe import probe_data
from cliplab.evaluation.protocol import Input, Protocol, Result, Row, option


@dataclass(frozen=True)
class Options:
    k: int = option(20, "neighbours that vote")
    temperature: float = option(0.07, "votes are exp(cosine / temperature)")
    seed: int = option(0, "seed of the train/test split when there is no training set")

    def __post_init__(self) -> None:
        if self.k < 1 or not self.temperature > 0:
            raise ValueError(f"need k >= 1 and temperature > 0, got {self.k}, {self.temperature}")


@dataclass
class KnnResult(Result):
    protocol: ClassVar[str] = "knn"

    dataset: str
    setup: str
    k: int
    n_train: int
    n_test: int
    chance: float
    top1: float
    top5: float

    def rows(self) -> list[Row]:
        return [Row(self.dataset, f"{self.k}-NN", "top-1", self.top1, self.chance, self.setup)]

    def scalars(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5}

    def summary(self) -> str:
        return f"{self.k}-NN {self.dataset}: top-1 {pct(self.top1)}%, top-5 {pct(self.top5)}%"

    def markdown(self, plots: Mapping[str, str] | None = None) -> str:
        table = markdown_table(["top-1 (%)", "top-5 (%)"], [[pct(self.top1), pct(self.top5)]])
        lines = [
            f"### {self.k}-NN: {self.dataset}",
            "",
            f"{self.setup}; chance {pct(self.chance)}%.",
            "",
            table,
        ]
        return "\n".join(lines + images_markdown(dict(plots or {})))


def knn_votes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> torch.Tensor:
    """Class votes (N_test, C): the ``k`` nearest training images' ``exp(cos / T)``."""
    sims = F.normalize(test_x.float(), dim=-1) @ F.normalize(train_x.float(), dim=-1).t()
    top, index = sims.topk(min(k, train_x.shape[0]), dim=1)  # (N_test, k)
    votes = torch.zeros(test_x.shape[0], num_classes)
    return votes.scatter_add_(1, train_y[index], (top / temperature).exp())


def run(
    store: FeatureStore,
    options: Options,
    *,
    dataset: ClassificationSet,
    train: ClassificationSet | None = None,
) -> KnnResult:
    data = probe_data(store, dataset, train, seed=options.seed)
    votes = knn_votes(
        data.train_x, data.train_y, data.test_x, dataset.num_classes, options.k, options.temperature
    )
    m = classification_metrics(votes, data.test_y)
    return KnnResult(
        dataset=dataset.name,
        setup=data.note,
        k=options.k,
        n_train=len(data.train_y),
        n_test=len(data.test_y),
        chance=1.0 / dataset.num_classes,
        top1=m["top1"],
        top5=m["top5"],
    )


def compare(items: Sequence[tuple[str, Any]], out_dir: Path) -> list[str]:
    r0: KnnResult = items[0][1]
    rows = [[m, pct(r.top1), pct(r.top5)] for m, r in items]
    table = markdown_table(["model", "top-1 (%)", "top-5 (%)"], rows)
    return [f"### {r0.dataset} (k = {r0.k})", "", r0.setup + ".", "", table, ""]


PROTOCOL = Protocol(
    name="knn",
    title="k-nearest-neighbour classification",
    help="k-NN classification on frozen features",
    inputs=(
        Input("dataset", "classification", "test set directory"),
        Input("train", "classification", "training set (default: split the test set)", False),
    ),
    options=Options,
    result=KnnResult,
    run=run,
    compare=compare,
)
