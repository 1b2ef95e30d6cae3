"""Effective robustness (the paper's section 3.3, Figures 13-15, after Taori et al. 2020): the
maths behind the robustness protocol (:mod:`cliplab.evaluation.protocols.robustness`).

One model is tested on an in-distribution set and on shifted sets of the same classes (emoji
of the training style -> another style -> photos), two ways: zero-shot, and with a linear
probe fitted on the source distribution ("adapting to the source", Figure 14).

Effective robustness is accuracy under shift above what a baseline of source-trained models
predicts from in-distribution accuracy. As Taori et al. and the paper, the baseline is a
line fitted to (in-distribution, shifted) accuracies in logit space. The paper fits it to
~200 ImageNet-trained models; we have no zoo, so **our baseline family is linear probes
fitted on the source set's features**: the full probe, k-shot probes (k = 1..16, the full
probe's ``C``) and full probes with 100x weaker to 100x stronger regularisation, which span a
range of in-distribution accuracy (those within 2x of chance are left out: they show no
trend), pooled over every model of a report. A least-squares line needs at least three
probes spanning a useful range of in-distribution accuracy (and a positive slope); when the
probes are of nearly equal quality (a source with one image per class has no k-shot probes)
the line has slope 1 through their mean point instead, and the report says so. Each shifted
set gets its own line, and the average over shifted sets one more (Figure 13's axes).

A shifted set may have only part of the source classes (the paper's ImageNet-R has 200 of
1000): its classes are matched to the source's by name and logits are restricted to them,
for zero-shot and probes alike; examples of classes the source lacks are dropped (counted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cliplab.data.evalsets import ClassificationSet
from cliplab.evaluation.metrics import target_ranks
from cliplab.evaluation.probe import (
    Backend,
    LinearClassifier,
    fit_logistic_regression,
    linear_probe,
    sample_shots,
)
from cliplab.zeroshot import zero_shot_logits

__all__ = [
    "Baseline",
    "EvalSplit",
    "align_to_source",
    "effective_robustness",
    "fit_baseline",
    "pool_baselines",
    "robustness_study",
]

#: Default clip of accuracies before the logit, for callers that do not know the set sizes.
DEFAULT_EPS = 1e-3


def _logit(p: float, eps: float = DEFAULT_EPS) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True)
class Baseline:
    """``logit(shifted) = slope * logit(in_distribution) + intercept``, fitted on ``points``.

    Accuracies are clipped to ``[eps, 1 - eps]`` before the logit (``eps_x`` for the
    in-distribution axis, ``eps_y`` for the shifted one): with ``0.5 / n`` for a set of ``n``
    images, a perfect score counts as "n - 0.5 of n" instead of an infinite logit.
    """

    slope: float
    intercept: float
    points: int
    kind: str  # "least squares", "slope 1 through one point", "y = x (no points)"
    eps_x: float = DEFAULT_EPS
    eps_y: float = DEFAULT_EPS

    def predict(self, in_distribution: float) -> float:
        z = self.slope * _logit(in_distribution, self.eps_x) + self.intercept
        return _sigmoid(z)

    def to_dict(self) -> dict[str, Any]:
        return {
            "slope": self.slope,
            "intercept": self.intercept,
            "points": self.points,
            "kind": self.kind,
            "eps_x": self.eps_x,
            "eps_y": self.eps_y,
        }


def fit_baseline(
    points: Sequence[tuple[float, float]],
    eps_x: float = DEFAULT_EPS,
    eps_y: float = DEFAULT_EPS,
    *,
    min_points: int = 3,
    min_logit_range: float = 1.0,
) -> Baseline:
    """A line through (in-distribution, shifted) accuracies in logit space.

    Least squares when there are at least ``min_points`` points whose in-distribution logits
    span at least ``min_logit_range`` (e.g. 27% to 50%) and the slope comes out positive;
    otherwise a few probes of nearly equal quality say nothing about the trend's slope, so
    the line has slope 1 (no change of the logit gap) through their mean point; with no
    points it is ``y = x``.
    """
    if not points:
        return Baseline(1.0, 0.0, 0, "y = x (no points)", eps_x, eps_y)
    xs = [_logit(a, eps_x) for a, _ in points]
    ys = [_logit(b, eps_y) for _, b in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if len(points) >= min_points and max(xs) - min(xs) >= min_logit_range:
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        if slope > 0:
            kind = "least squares"
            return Baseline(slope, my - slope * mx, len(points), kind, eps_x, eps_y)
    kind = "slope 1 through the mean point (too little spread for a fit)"
    return Baseline(1.0, my - mx, len(points), kind, eps_x, eps_y)


def effective_robustness(in_distribution: float, shifted: float, baseline: Baseline) -> float:
    """Shifted accuracy above the baseline's prediction at this in-distribution accuracy."""
    return shifted - baseline.predict(in_distribution)


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().casefold()


@dataclass
class EvalSplit:
    """Test features of one set, labels in the source's class indices, and the source
    classes the set covers (logits are restricted to them)."""

    name: str
    features: torch.Tensor
    labels: torch.Tensor
    classes: list[int]
    dropped: int = 0

    def accuracy(self, logits: torch.Tensor) -> float:
        """Top-1 accuracy of source-space logits (N, C_source), restricted to ``classes``."""
        sub = logits[:, self.classes]
        position = {c: i for i, c in enumerate(self.classes)}
        target = torch.as_tensor([position[int(y)] for y in self.labels], dtype=torch.long)
        return float((target_ranks(sub.cpu(), target) == 0).double().mean())


def align_to_source(
    source_classnames: Sequence[str], dataset: ClassificationSet
) -> tuple[list[int], torch.Tensor, list[int], int]:
    """(kept example indices, their labels as source indices, the source classes the set's
    class list covers, number of dropped examples). Classes are matched by name, ignoring
    case, ``_`` and repeated spaces."""
    index = {_norm(c): i for i, c in enumerate(source_classnames)}
    mapping = [index.get(_norm(c)) for c in dataset.classnames]
    keep = [i for i, y in enumerate(dataset.labels) if mapping[y] is not None]
    labels = torch.as_tensor([mapping[dataset.labels[i]] for i in keep], dtype=torch.long)
    classes = sorted({m for m in mapping if m is not None})
    return keep, labels, classes, len(dataset) - len(keep)


def robustness_study(
    *,
    classnames: Sequence[str],
    train_x: torch.Tensor,
    train_y: Sequence[int] | torch.Tensor,
    zero_shot_weights: torch.Tensor,
    in_distribution: EvalSplit,
    shifted: Sequence[EvalSplit],
    validation: EvalSplit | None = None,
    baseline_shots: Sequence[int] = (1, 2, 4, 8, 16),
    baseline_C_factors: Sequence[float] = (0.01, 0.1, 10.0, 100.0),
    C: float | None = None,
    seed: int = 0,
    backend: Backend = "torch",
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Zero-shot vs source-fitted probes on the in-distribution and shifted sets.

    The full probe's ``C`` is searched on ``validation`` when given, else on a per-class
    split of the training features (unless ``C`` is fixed). Returns a JSON-ready dict: ``accuracy`` (model -> set -> top-1, plus ``shift average``),
    ``baseline`` (set -> line), ``effective_robustness`` and ``gap_closed`` for zero-shot and
    the full probe, and the ``baseline_points`` used (see :func:`pool_baselines` to score
    several models against one pooled baseline).
    """
    train_y = torch.as_tensor(train_y, dtype=torch.long)
    num_classes = len(classnames)
    splits = [in_distribution, *shifted]
    accuracy: dict[str, dict[str, float]] = {}

    def record(model_name: str, logits_of: Any) -> dict[str, float]:
        row = {s.name: s.accuracy(logits_of(s.features)) for s in splits}
        if shifted:
            row["shift average"] = sum(row[s.name] for s in shifted) / len(shifted)
        accuracy[model_name] = row
        return row

    record("zero-shot", lambda x: zero_shot_logits(x, zero_shot_weights))
    probe = linear_probe(
        train_x,
        train_y,
        in_distribution.features,
        in_distribution.labels,
        num_classes=num_classes,
        val_x=validation.features if validation is not None else None,
        val_y=validation.labels if validation is not None else None,
        refit=validation is None,
        C=C,
        seed=seed,
        backend=backend,
        max_iter=max_iter,
    )
    record("linear probe", probe.classifier.logits)
    points = [{"model": "linear probe", **accuracy["linear probe"]}]
    for k in baseline_shots:
        idx = sample_shots(train_y, k, seed)
        if len(idx) >= train_y.numel():
            continue  # as large as the full probe: not a new point
        clf: LinearClassifier = fit_logistic_regression(
            train_x[idx],
            train_y[idx],
            num_classes=num_classes,
            C=probe.C,
            backend=backend,
            max_iter=max_iter,
        )
        name = f"{k}-shot probe"
        record(name, clf.logits)
        points.append({"model": name, **accuracy[name]})
    chance = 1.0 / max(1, len(in_distribution.classes))
    for factor in baseline_C_factors:
        clf = fit_logistic_regression(
            train_x,
            train_y,
            num_classes=num_classes,
            C=probe.C * factor,
            backend=backend,
            max_iter=max_iter,
        )
        name = f"probe, C x {factor:g}"
        row = record(name, clf.logits)
        if row[in_distribution.name] >= 2 * chance:  # near-chance probes show no trend
            points.append({"model": name, **row})
    targets = [s.name for s in shifted] + (["shift average"] if shifted else [])
    sets = {
        s.name: {"n": int(s.labels.numel()), "classes": len(s.classes), "dropped": s.dropped}
        for s in splits
    }
    scored = _score(accuracy, points, in_distribution.name, targets, sets)
    return {
        "in_distribution": in_distribution.name,
        "shifted": [s.name for s in shifted],
        "sets": sets,
        "probe": {"C": probe.C, "val_accuracy": probe.val_accuracy, "n_train": probe.n_train},
        "accuracy": accuracy,
        **scored,
    }


def _eps(sets: dict[str, dict[str, Any]], name: str) -> float:
    """``0.5 / n`` for a set of ``n`` images (the smallest shifted set for the average)."""
    sizes = [v["n"] for k, v in sets.items() if k == name]
    if name == "shift average":
        sizes = [v["n"] for v in list(sets.values())[1:]]
    return 0.5 / max(1, min(sizes)) if sizes else DEFAULT_EPS


def _score(
    accuracy: dict[str, dict[str, float]],
    points: Sequence[dict[str, Any]],
    id_name: str,
    targets: Sequence[str],
    sets: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Baselines fitted on ``points``; effective robustness and gap closed of zero-shot and
    the full probe. ``sets`` (name -> {"n": size}, in-distribution first) sets the clips."""
    eps_x = _eps(sets, id_name)
    baseline = {
        t: fit_baseline(
            [(p[id_name], p[t]) for p in points if id_name in p and t in p], eps_x, _eps(sets, t)
        )
        for t in targets
    }
    effective: dict[str, dict[str, float]] = {}
    gap_closed: dict[str, dict[str, float | None]] = {}
    for model_name in ("zero-shot", "linear probe"):
        row = accuracy[model_name]
        effective[model_name], gap_closed[model_name] = {}, {}
        for t in targets:
            predicted = baseline[t].predict(row[id_name])
            er = row[t] - predicted
            effective[model_name][t] = er
            room = row[id_name] - predicted  # the gap a perfectly robust model would close
            gap_closed[model_name][t] = er / room if room > 1e-6 else None
    return {
        "baseline": {t: b.to_dict() for t, b in baseline.items()},
        "baseline_points": list(points),
        "effective_robustness": effective,
        "gap_closed": gap_closed,
    }


def pool_baselines(studies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Studies of several models on the same sets, rescored against one baseline fitted on
    every model's probes (as the paper pools all ImageNet models into one trend line)."""
    if not studies:
        return []
    points = [p for s in studies for p in s["baseline_points"]]
    out = []
    for study in studies:
        targets = list(study["baseline"])
        rescored = _score(
            study["accuracy"], points, study["in_distribution"], targets, study["sets"]
        )
        rescored["baseline_points"] = study["baseline_points"]  # its own, so pooling is idempotent
        out.append({**study, **rescored, "baseline_pooled_over": len(studies)})
    return out
