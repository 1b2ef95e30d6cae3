"""Linear probes (torch L-BFGS vs scikit-learn), the paper's C search, few-shot curves and
effective robustness."""

from __future__ import annotations

import builtins

import pytest
import torch
import torch.nn.functional as F

import refs
from cliplab.data.evalsets import ClassificationSet
from cliplab.evaluation.effective_robustness import (
    Baseline,
    EvalSplit,
    align_to_source,
    effective_robustness,
    fit_baseline,
    pool_baselines,
    robustness_study,
)
from cliplab.evaluation.probe import (
    fit_logistic_regression,
    linear_probe,
    sample_shots,
    search_regularization,
    stratified_split,
)
from cliplab.evaluation.protocols.fewshot import few_shot_curve, matching_shots, summarise


def make_blobs(n_per_class: int, c: int = 4, d: int = 16, spread: float = 0.6, seed: int = 0):
    """Gaussian blobs around unit-norm-ish centres: (features (N, d), labels (N,))."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(c, d, generator=g), dim=1) * 3
    y = torch.arange(c).repeat_interleave(n_per_class)
    x = centers[y] + spread * torch.randn(len(y), d, generator=g)
    return x, y


# --------------------------------------------------------------------------- the fit


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
def test_torch_lbfgs_matches_sklearn(C: float) -> None:
    refs.require("sklearn")
    x, y = make_blobs(30, c=5, spread=1.5)
    ours = fit_logistic_regression(x, y, C=C, tol=1e-8, max_iter=5000)
    ref = fit_logistic_regression(x, y, C=C, backend="sklearn", tol=1e-8, max_iter=5000)
    # Multinomial weights are unique only up to a per-column shift; compare centred ones.
    centre = lambda w: w - w.mean(dim=0, keepdim=True)  # noqa: E731
    torch.testing.assert_close(centre(ours.weight), centre(ref.weight), atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(
        centre(ours.bias[:, None]), centre(ref.bias[:, None]), atol=2e-4, rtol=1e-3
    )
    torch.testing.assert_close(
        ours.logits(x).softmax(1), ref.logits(x).softmax(1), atol=1e-5, rtol=1e-4
    )


def test_binary_problem_matches_sklearn() -> None:
    refs.require("sklearn")
    x, y = make_blobs(25, c=2, spread=2.0)
    ours = fit_logistic_regression(x, y, C=0.3, tol=1e-8, max_iter=5000)
    ref = fit_logistic_regression(x, y, C=0.3, backend="sklearn", tol=1e-8, max_iter=5000)
    torch.testing.assert_close(
        ours.logits(x).softmax(1), ref.logits(x).softmax(1), atol=1e-5, rtol=1e-4
    )


def test_sklearn_backend_names_the_extra_when_missing(monkeypatch) -> None:
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    x, y = make_blobs(3)
    with pytest.raises(ImportError, match=r"cliplab\[eval\]"):
        fit_logistic_regression(x, y, backend="sklearn")


def test_separable_probe_is_perfect() -> None:
    x, y = make_blobs(20, spread=0.3)
    result = linear_probe(x, y, x[::2], y[::2], num_classes=4, max_iter=200)
    assert result.metrics["top1"] == 1.0
    assert result.val_accuracy == 1.0
    assert 1e-6 <= result.C <= 1e6
    assert 7 < len(result.search) <= 15  # 7 coarse + up to 2 per halving, 4 halvings
    assert result.C >= 1e4  # separable: the validation loss keeps falling as C grows
    assert result.n_train == 80 and result.n_val == 16


def test_absent_classes_are_never_predicted() -> None:
    x, y = make_blobs(10, c=3)
    clf = fit_logistic_regression(x, y, num_classes=5, C=1.0)
    assert clf.weight.shape == (5, 16)
    assert set(clf.predict(x).tolist()) <= {0, 1, 2}


# --------------------------------------------------------------------------- the search


def test_search_follows_the_paper_schedule() -> None:
    calls: list[float] = []
    peak = 1.375  # 11/8 of a decade: reachable at 8 steps per decade

    def evaluate(C: float) -> tuple[float, float]:
        calls.append(C)
        return -abs(torch.log10(torch.tensor(C)).item() - peak), 0.0

    best, trace = search_regularization(evaluate)
    assert best == pytest.approx(10**peak)
    assert calls[:7] == pytest.approx([10.0**e for e in (-6, -4, -2, 0, 2, 4, 6)])
    assert len(calls) == len(trace) == 15
    steps = sorted({round(abs(t["log10_C"] - peak), 6) for t in trace})
    assert 0.125 in steps  # finest resolution: 8 steps per decade


def test_search_breaks_ties_towards_stronger_regularisation() -> None:
    best, _ = search_regularization(lambda C: (1.0, 0.0))
    assert best == pytest.approx(1e-6)


def test_stratified_split() -> None:
    y = torch.tensor([0] * 10 + [1] * 5 + [2])
    kept, held = stratified_split(y, 0.2, seed=0)
    assert sorted(kept + held) == list(range(16))
    held_labels = y[held].tolist()
    assert held_labels.count(0) == 2 and held_labels.count(1) == 1 and 2 not in held_labels
    assert stratified_split(y, 0.2, seed=0) == (kept, held)


# --------------------------------------------------------------------------- few-shot


def test_sample_shots() -> None:
    y = torch.tensor([0] * 6 + [1] * 6 + [2] * 2)
    idx = sample_shots(y, 4, seed=3)
    assert [y[idx].tolist().count(c) for c in range(3)] == [4, 4, 2]
    assert sample_shots(y, 4, seed=3) == idx
    assert sample_shots(y, 4, seed=4) != idx
    pool = list(range(0, 14, 2))
    assert set(sample_shots(y, 2, seed=0, pool=pool)) <= set(pool)


def test_matching_shots() -> None:
    shots, means = [1, 2, 4, 8, 16], [0.2, 0.4, 0.6, 0.8, 0.9]
    assert matching_shots(shots, means, 0.6) == pytest.approx(4.0)
    assert matching_shots(shots, means, 0.5) == pytest.approx(2**1.5)
    assert matching_shots(shots, means, 0.95) is None
    assert matching_shots(shots, means, 0.1) == 1.0


def test_few_shot_curve_improves_with_k() -> None:
    x, y = make_blobs(40, c=4, spread=2.0)
    xt, yt = make_blobs(40, c=4, spread=2.0, seed=0)
    runs = few_shot_curve(x, y, xt, yt, num_classes=4, shots=(1, 4, 16), seeds=(0, 1), C=1.0)
    curve = summarise(runs)
    means = [curve[str(k)]["mean"] for k in (1, 4, 16)]
    assert means[0] < means[2]
    assert all(len(runs[k]) == 2 for k in (1, 4, 16))
    assert runs[4][0]["n_train"] == 16
    assert set(curve) == {"1", "4", "16"}
    a, b = (r["top1"] for r in runs[1])
    assert curve["1"]["std"] == pytest.approx(abs(a - b) / 2**0.5)  # unbiased, two draws


# --------------------------------------------------------------------------- robustness


def test_fit_baseline_recovers_a_logit_line() -> None:
    logit = lambda p: torch.logit(torch.tensor(p)).item()  # noqa: E731
    sigmoid = lambda z: torch.sigmoid(torch.tensor(z)).item()  # noqa: E731
    xs = [0.3, 0.5, 0.7, 0.9]
    points = [(a, sigmoid(0.8 * logit(a) - 1.0)) for a in xs]
    line = fit_baseline(points)
    assert line.kind == "least squares"
    assert line.slope == pytest.approx(0.8, abs=1e-6)
    assert line.intercept == pytest.approx(-1.0, abs=1e-6)
    on_line = sigmoid(0.8 * logit(0.6) - 1.0)
    assert effective_robustness(0.6, on_line + 0.05, line) == pytest.approx(0.05, abs=1e-6)
    one = fit_baseline([(0.8, 0.6)])
    assert one.slope == 1.0 and one.predict(0.8) == pytest.approx(0.6)
    assert fit_baseline([]).predict(0.42) == pytest.approx(0.42)
    # Probes of nearly equal quality (or a negative slope): slope 1 through their mean.
    close = fit_baseline([(0.46, 0.05), (0.47, 0.04), (0.45, 0.06)])
    assert close.slope == 1.0 and close.kind.startswith("slope 1")
    backwards = fit_baseline([(0.3, 0.2), (0.5, 0.1), (0.7, 0.05)])
    assert backwards.slope == 1.0


def test_align_to_source_restricts_classes() -> None:
    shifted = ClassificationSet(
        images=[f"{i}.png" for i in range(4)],
        labels=[0, 1, 2, 1],
        classnames=["Dog", "unicorn", "red_fox"],
        name="s",
        fingerprint="x",
    )
    keep, labels, classes, dropped = align_to_source(["cat", "dog", "red fox"], shifted)
    assert keep == [0, 2] and labels.tolist() == [1, 2] and classes == [1, 2] and dropped == 2


def test_robustness_study_on_known_features() -> None:
    # Source: clean blobs. Shifted: the same classes, noisier. Zero-shot weights are the
    # class centres, so zero-shot is near perfect on both.
    c, d = 4, 16
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(c, d, generator=g), dim=1)
    y = torch.arange(c).repeat_interleave(30)
    source = centers[y] + 0.1 * torch.randn(len(y), d, generator=g)
    id_test = centers[y] + 0.1 * torch.randn(len(y), d, generator=g)
    shift = centers[y] + 0.5 * torch.randn(len(y), d, generator=g)
    study = robustness_study(
        classnames=[str(i) for i in range(c)],
        train_x=source,
        train_y=y,
        zero_shot_weights=centers,
        in_distribution=EvalSplit("id", id_test, y, list(range(c))),
        shifted=[EvalSplit("shift", shift, y, list(range(c)))],
        baseline_shots=(1, 2),
        C=1.0,
        max_iter=200,
    )
    acc = study["accuracy"]
    assert acc["zero-shot"]["id"] == 1.0
    assert {"zero-shot", "linear probe", "1-shot probe", "2-shot probe"} <= set(acc)
    assert "probe, C x 0.01" in acc
    assert acc["zero-shot"]["shift average"] == acc["zero-shot"]["shift"]
    er = study["effective_robustness"]["zero-shot"]["shift"]
    line = study["baseline"]["shift"]
    n_points = line["points"]
    assert 3 <= n_points <= 7 and n_points == len(study["baseline_points"])
    # effective robustness is the shifted accuracy above the baseline's prediction
    predicted = Baseline(**line).predict(acc["zero-shot"]["id"])
    assert er == pytest.approx(acc["zero-shot"]["shift"] - predicted)
    pooled = pool_baselines([study, study])
    assert pooled[0]["baseline"]["shift"]["points"] == 2 * n_points
    again = pool_baselines(pooled)
    assert again[0]["baseline"] == pooled[0]["baseline"]
