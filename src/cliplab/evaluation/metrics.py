"""Ranking and classification metrics: one tie rule for every protocol.

**Ranks.** The rank of the right answer is the number of *wrong* candidates that score at
least as high as the best right one (0 = first place). A tie therefore counts against the
model, as a strict ranking does: a model whose scores are all equal ranks last, never first,
and a NaN score for the right answer ranks it last. Top-k accuracy (zero-shot, probes) and
Recall@K (retrieval, with several right captions per image) are both "rank < k".

**Classification.** The confusion matrix has true classes as rows and predictions as columns
(the label where it ranks first, else the best wrong class); per-class recall is the diagonal over the row sums; the mean per-class recall
(``balanced_accuracy_score``) averages over the classes present in the labels. These follow
scikit-learn, checked against it in the tests. Accuracies are fractions in [0, 1].

**CLIP_benchmark's rule** (``ties="topk"``): a hit is a right answer among the ``k``
indices ``torch.topk`` returns, and the prediction is ``argmax``: among tied scores torch
picks, so a tie may count for the model. It differs from the strict rule only where scores
tie exactly (duplicate captions, a model that scores classes the same); the flag reproduces
CLIP_benchmark's numbers (``tests/test_clip_benchmark.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "TIES",
    "mean_per_class_recall",
    "per_class_recall",
    "predictions",
    "strict_ranks",
    "target_ranks",
    "topk_accuracy",
    "topk_correct",
    "topk_hits",
]


#: Tie rules: ``strict`` (ties count against the model) and ``topk`` (CLIP_benchmark's).
TIES = ("strict", "topk")


def topk_hits(scores: torch.Tensor, correct: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (N,): whether a right candidate is among the ``k`` indices ``torch.topk``
    returns for each row (CLIP_benchmark's rule: torch breaks ties)."""
    k = min(k, scores.shape[1])
    return correct.gather(1, scores.topk(k, dim=1).indices).any(dim=1)


def strict_ranks(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Ranks (N,) of each row's best right candidate among the wrong ones (see the module
    docstring). ``scores`` (N, M); ``correct`` (N, M) bool with at least one True per row."""
    if scores.shape != correct.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(correct.shape)} differ")
    if scores.numel() and not bool(correct.any(dim=1).all()):
        raise ValueError("every row needs at least one right candidate")
    best = scores.masked_fill(~correct, float("-inf")).amax(dim=1)  # (N,)
    ranks = ((scores >= best[:, None]) & ~correct).sum(dim=1)
    wrong = (~correct).sum(dim=1)
    return torch.where(torch.isnan(best), wrong, ranks)


def target_ranks(logits: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Rank (N,) of each example's label among the classes (one right class per row)."""
    labels = _labels(labels).to(logits.device)
    correct = torch.zeros_like(logits, dtype=torch.bool)
    correct[torch.arange(labels.numel(), device=logits.device), labels] = True
    return strict_ranks(logits, correct)


def _labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long).reshape(-1)


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor | Sequence[int], k: int
) -> torch.Tensor:
    """Bool (N,): whether each true label ranks within the top ``k`` (ties count against)."""
    return target_ranks(logits, labels) < k


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor | Sequence[int], k: int = 1) -> float:
    """Fraction of examples whose label ranks within the top ``k``."""
    if logits.shape[0] == 0:
        raise ValueError("no examples")
    return float(topk_correct(logits, labels, k).float().mean())


def predictions(
    logits: torch.Tensor, labels: torch.Tensor | Sequence[int], ranks: torch.Tensor | None = None
) -> torch.Tensor:
    """The predicted class of each example under the tie rule: the label where it ranks
    first, else the best-scoring wrong class (so accuracy equals the confusion diagonal)."""
    labels = _labels(labels)
    ranks = target_ranks(logits, labels).cpu() if ranks is None else ranks
    rows = torch.arange(labels.numel())
    others = logits.detach().float().cpu().clone()
    others[rows, labels] = float("-inf")
    return torch.where(ranks == 0, labels, others.argmax(dim=1))


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
    ties: str = "strict",
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
    if labels.numel() == 0:
        raise ValueError("no examples")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    ranks = target_ranks(logits, labels).cpu()
    if ties == "strict":
        confusion = confusion_matrix(predictions(logits, labels, ranks), labels, num_classes)
        result: dict[str, Any] = {f"top{k}": float((ranks < k).double().mean()) for k in topk}
    else:  # CLIP_benchmark: one topk for the largest k, its first k columns; argmax predicts
        scores = logits.detach().float().cpu()
        top = scores.topk(min(max(topk), num_classes), dim=1).indices
        hit = top == labels[:, None]
        result = {f"top{k}": float(hit[:, :k].any(dim=1).double().mean()) for k in topk}
        confusion = confusion_matrix(scores.argmax(dim=1), labels, num_classes)
    recall = per_class_recall(confusion)
    result["mean_per_class_recall"] = mean_per_class_recall(confusion)
    result["n"] = int(labels.numel())
    result["num_classes"] = num_classes
    result["per_class"] = {
        name: (None if torch.isnan(r) else float(r)) for name, r in zip(names, recall)
    }
    if num_classes <= 100:
        result["confusion"] = confusion.tolist()
    return result
