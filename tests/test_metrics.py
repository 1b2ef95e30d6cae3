"""Classification metrics against scikit-learn's, and on cases worked out by hand."""

from __future__ import annotations

import pytest
import torch

import refs
from cliplab.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    mean_per_class_recall,
    per_class_recall,
    strict_ranks,
    target_ranks,
    topk_accuracy,
    topk_correct,
)

sklearn_metrics = refs.require("sklearn.metrics")


def random_problem(n: int = 300, c: int = 12, seed: int = 0, missing: tuple[int, ...] = (3,)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    for m in missing:  # classes without examples must not count in per-class means
        labels[labels == m] = (m + 1) % c
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, c)
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_matches_sklearn(seed: int) -> None:
    logits, labels = random_problem(seed=seed)
    c = logits.shape[1]
    for k in (1, 2, 5):
        expected = sklearn_metrics.top_k_accuracy_score(
            labels.numpy(), logits.numpy(), k=k, labels=list(range(c))
        )
        assert topk_accuracy(logits, labels, k) == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_confusion_and_recalls_match_sklearn() -> None:
    logits, labels = random_problem(seed=3)
    c = logits.shape[1]
    pred = logits.argmax(1)
    conf = confusion_matrix(pred, labels, c)
    expected = sklearn_metrics.confusion_matrix(labels.numpy(), pred.numpy(), labels=list(range(c)))
    assert conf.tolist() == expected.tolist()
    recall = per_class_recall(conf)
    present = sorted(set(labels.tolist()))
    sk_recall = sklearn_metrics.recall_score(
        labels.numpy(), pred.numpy(), labels=present, average=None
    )
    torch.testing.assert_close(recall[present], torch.as_tensor(sk_recall, dtype=torch.float64))
    assert torch.isnan(recall[3])  # no examples of class 3
    assert mean_per_class_recall(conf) == pytest.approx(
        sklearn_metrics.balanced_accuracy_score(labels.numpy(), pred.numpy())
    )


def test_hand_worked_example() -> None:
    # 4 classes; predictions: right, right, wrong (2 -> 0, true class third), right;
    # class 1 has two examples.
    logits = torch.tensor(
        [[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -1.0], [2.0, 0.0, 1.0, 1.5], [0.0, 3.0, 1.0, -1.0]]
    )
    labels = torch.tensor([0, 1, 2, 1])
    m = classification_metrics(logits, labels, ["a", "b", "c", "d"], topk=(1, 2, 3))
    assert m["top1"] == 0.75
    assert m["top2"] == 0.75  # the third example's class ranks third (behind a and d)
    assert m["top3"] == 1.0
    assert target_ranks(logits, labels).tolist() == [0, 0, 2, 0]
    assert topk_correct(logits, labels, 2).tolist() == [True, True, False, True]
    assert m["per_class"] == {"a": 1.0, "b": 1.0, "c": 0.0, "d": None}
    assert m["mean_per_class_recall"] == pytest.approx(2 / 3)
    assert m["confusion"] == [[1, 0, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert m["n"] == 4 and m["num_classes"] == 4


def test_ties_count_against_the_model() -> None:
    """The one tie rule: a wrong class that scores as high as the label outranks it."""
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    labels = [1, 2, 2, 2]
    assert target_ranks(logits, labels).tolist() == [1, 2, 2, 1]
    m = classification_metrics(logits, labels, topk=(1, 2))
    assert m["top1"] == 0.0  # torch's argmax would call the first row right
    assert m["top2"] == pytest.approx(2 / 4)
    assert sum(row[i] for i, row in enumerate(m["confusion"])) == 0  # consistent with top-1
    # a constant model is at chance only through ties: it ranks every label last
    assert topk_accuracy(torch.zeros(5, 4), [0, 1, 2, 3, 0], 3) == 0.0
    # NaN scores rank the label last
    nan = torch.tensor([[float("nan"), 0.0, 1.0]])
    assert target_ranks(nan, [0]).tolist() == [2]
    with pytest.raises(ValueError, match="at least one right"):
        strict_ranks(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool))


def test_class_without_examples_is_reported_as_none() -> None:
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    m = classification_metrics(logits, [0, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] is None
    assert m["mean_per_class_recall"] == 1.0


def test_wrong_number_of_class_names() -> None:
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(torch.zeros(2, 3), [0, 1], ["a", "b"])
