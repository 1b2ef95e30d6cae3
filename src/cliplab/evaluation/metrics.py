"""Classification metrics on logits: top-k accuracy, confusion matrix, per-class recall.

Conventions follow scikit-learn (checked against it in the tests): the confusion matrix has
true classes as rows and predictions as columns; per-class recall is the diagonal over the
row sums; the mean per-class recall (``balanced_accuracy_score``) averages over the classes
present in the labels. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "mean_per_class_recall",
    "per_class_recall",
    "topk_accuracy",
    "topk_correct",
]


def _labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long).reshape(-1)


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor | Sequence[int], k: int
) -> torch.Tensor:
    """Bool (N,): whether each true label is among the ``k`` highest logits (``k`` is capped
    at the number of classes)."""
    labels = _labels(labels).to(logits.device)
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(dim=1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor | Sequence[int], k: int = 1) -> float:
    """Fraction of examples whose label is in the top ``k`` (``top_k_accuracy_score``)."""
    if logits.shape[0] == 0:
        raise ValueError("no examples")
    return float(topk_correct(logits, labels, k).float().mean())


def confusion_matrix(
    predictions: torch.Tensor | Sequence[int],
    labels: torch.Tensor | Sequence[int],
    num_classes: int,
) -> torch.Tensor:
    """Counts (C, C): row = true class, column = predicted class."""
    pred = _labels(predictions)
    true = _labels(labels)
    flat = true * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_recall(confusion: torch.Tensor) -> torch.Tensor:
    """Recall (accuracy) of each class (C,); NaN for a class with no examples."""
    support = confusion.sum(dim=1).double()
    correct = confusion.diagonal().double()
    return torch.where(support > 0, correct / support.clamp(min=1), torch.nan)


def mean_per_class_recall(confusion: torch.Tensor) -> float:
    """Mean recall over the classes that have examples (the paper's metric for some sets)."""
    recall = per_class_recall(confusion)
    present = ~recall.isnan()
    if not present.any():
        raise ValueError("no examples")
    return float(recall[present].mean())


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    classnames: Sequence[str] | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Top-k accuracies, mean per-class recall and per-class accuracy, as a JSON-ready dict.

    Keys: ``top1``, ``top5`` (one per ``topk``), ``mean_per_class_recall``, ``per_class``
    (class name -> accuracy, ``None`` for classes without examples), ``n``, ``num_classes``,
    and ``confusion`` (a list of rows) when there are at most 100 classes.
    """
    labels = _labels(labels)
    num_classes = logits.shape[1]
    names = list(classnames) if classnames is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} logit columns")
    confusion = confusion_matrix(logits.argmax(dim=1).cpu(), labels, num_classes)
    recall = per_class_recall(confusion)
    result: dict[str, Any] = {f"top{k}": topk_accuracy(logits, labels, k) for k in topk}
    result["mean_per_class_recall"] = mean_per_class_recall(confusion)
    result["n"] = int(labels.numel())
    result["num_classes"] = num_classes
    result["per_class"] = {
        name: (None if torch.isnan(r) else float(r)) for name, r in zip(names, recall)
    }
    if num_classes <= 100:
        result["confusion"] = confusion.tolist()
    return result
