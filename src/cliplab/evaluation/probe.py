"""Linear probes: multinomial logistic regression on frozen features (the paper's appendix A.3),
the part the linear-probe, few-shot and robustness protocols share.

The objective is scikit-learn's ``LogisticRegression(C=C)`` with L-BFGS, divided by ``C * N``::

    mean cross-entropy + ||W||^2 / (2 * C * N)        (the bias is not penalised)

so both backends find the same optimum: ``"torch"`` (float64 on CPU, float32 on GPU; any
number of classes, warm starts, runs where the features are) and ``"sklearn"`` (needs the
``eval`` extra). The regularisation is chosen on a validation split with the paper's
parametric search: ``C`` in 10^-6..10^6, starting from every second decade, then halving the
step around the best value until 8 steps per decade (15 fits instead of 96).

Features are L2-normalised before fitting (as the zero-shot classifier sees them), so a
probe and the zero-shot head are classifiers of the same family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cliplab.data.evalsets import ClassificationSet
from cliplab.encode import FeatureStore
from cliplab.evaluation.metrics import classification_metrics, target_ranks
from cliplab.evaluation.protocol import option

__all__ = [
    "BACKENDS",
    "LinearClassifier",
    "ProbeOptions",
    "ProbeData",
    "ProbeResult",
    "fit_logistic_regression",
    "linear_probe",
    "probe_data",
    "sample_shots",
    "search_regularization",
    "stratified_split",
]

Backend = Literal["torch", "sklearn"]
BACKENDS = ("torch", "sklearn")


@dataclass(frozen=True)
class ProbeOptions:
    """The options every protocol that fits probes shares."""

    backend: str = option(
        "torch", "L-BFGS implementation (sklearn needs the 'eval' extra)", choices=BACKENDS
    )
    max_iter: int = option(1000, "L-BFGS iterations per fit")
    C: float | None = option(None, "fixed inverse regularisation (skips the search)")
    seed: int = option(0, "seed of the train/test split when there is no training set")
    templates: str | Sequence[str] | None = option(
        None, "zero-shot templates for the comparison: 'dataset' (default), a name or a file"
    )

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.C is not None and not self.C > 0:
            raise ValueError(f"C must be positive, got {self.C}")
        if self.backend == "sklearn":
            try:
                _require_sklearn()
            except ImportError as e:
                raise ValueError(str(e)) from None


@dataclass
class LinearClassifier:
    """``logits = normalize(x) @ weight.T + bias``; weight (C, D), bias (C,)."""

    weight: torch.Tensor
    bias: torch.Tensor
    normalize: bool = True

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.weight.device, self.weight.dtype)
        if self.normalize:
            x = F.normalize(x, dim=-1)
        return x @ self.weight.t() + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=1)


def _require_sklearn() -> Any:
    try:
        import sklearn.linear_model
    except ImportError as e:
        raise ImportError(
            "the 'sklearn' backend needs scikit-learn: pip install 'cliplab[eval]' "
            "(or use backend='torch', which needs nothing more)"
        ) from e
    return sklearn.linear_model


def _fit_torch(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    C: float,
    max_iter: int,
    tol: float,
    init: LinearClassifier | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = x.shape
    # Two reparametrisations that leave the optimum unchanged and help L-BFGS:
    # - centring: W x + b = W (x - mu) + (b + W mu) and the bias is not penalised, so fitting
    #   on x - mu gives the same W; features of weak models share a large common direction
    #   that makes the problem badly conditioned otherwise;
    # - scaling: strong regularisation makes the penalty's curvature 1/(C n) dwarf the
    #   cross-entropy's (at most ~0.25 on unit-norm features); optimising V = W / a with
    #   a = sqrt(min(1, C n)) gives the penalty unit curvature.
    mu = x.mean(dim=0)  # (D,)
    xc = x - mu
    a = math.sqrt(min(1.0, C * n))
    if init is not None:
        w0 = init.weight.detach().to(x.device, x.dtype)
        v = (w0 / a).clone().requires_grad_(True)
        b = (init.bias.detach().to(x.device, x.dtype) + w0 @ mu).clone().requires_grad_(True)
    else:
        v = torch.zeros(num_classes, d, dtype=x.dtype, device=x.device, requires_grad=True)
        b = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    penalty = a * a / (2.0 * C * n)

    def objective(v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(a * (xc @ v.t()) + b, y) + penalty * (v * v).sum()

    # The tolerance is relative to the gradient at zero: many classes and near-identical
    # features make every gradient entry tiny, and an absolute tolerance would stop at once.
    with torch.enable_grad():
        zero_v = torch.zeros_like(v, requires_grad=True)
        zero_b = torch.zeros_like(b, requires_grad=True)
        grads = torch.autograd.grad(objective(zero_v, zero_b), [zero_v, zero_b])
    scale = max(float(g.abs().max()) for g in grads)
    optimizer = torch.optim.LBFGS(
        [v, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tol * max(scale, 1e-12),
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(v, b)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    w = a * v.detach()
    return w, b.detach() - w @ mu


def _fit_sklearn(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    linear_model = _require_sklearn()
    xs, ys = x.cpu().double().numpy(), y.cpu().numpy()
    present = sorted(set(ys.tolist()))
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    b = torch.full((num_classes,), -1e4, dtype=torch.float64)  # absent classes: never predicted
    if len(present) == 1:  # scikit-learn needs two classes; one class is always right
        b[present[0]] = 0.0
        return w, b
    # Binary problems use scikit-learn's binomial loss, one weight vector z; the multinomial
    # optimum has rows -z/2 and z/2, whose penalty is half as large: same optimum at 2C.
    scale = 2.0 if len(present) == 2 else 1.0
    model = linear_model.LogisticRegression(C=C * scale, max_iter=max_iter, tol=tol)
    model.fit(xs, ys)
    coef = torch.from_numpy(model.coef_)
    intercept = torch.from_numpy(model.intercept_)
    if len(present) == 2:  # binary: scikit-learn keeps one row, the logit of the second class
        coef = torch.cat([-coef / 2, coef / 2])
        intercept = torch.cat([-intercept / 2, intercept / 2])
    idx = torch.as_tensor(model.classes_, dtype=torch.long)
    w[idx], b[idx] = coef, intercept
    return w, b


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    *,
    num_classes: int | None = None,
    C: float = 1.0,
    backend: Backend = "torch",
    max_iter: int = 1000,
    tol: float = 1e-4,
    device: str | torch.device | None = None,
    normalize: bool = True,
    init: LinearClassifier | None = None,
) -> LinearClassifier:
    """Fit a multinomial logistic regression with L-BFGS (see the module docstring).

    ``init`` warm-starts the torch backend (the regularisation search uses it). ``tol`` is the
    gradient tolerance: for torch, of the max-abs gradient relative to its value at zero
    weights; for scikit-learn, its own ``tol``. ``max_iter=1000`` is the paper's setting.
    """
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    num_classes = int(num_classes if num_classes is not None else int(y.max()) + 1)
    if features.shape[0] != y.numel() or y.numel() == 0:
        raise ValueError(f"{features.shape[0]} feature rows for {y.numel()} labels")
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    dev = torch.device(device) if device is not None else features.device
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    x = features.to(dev, dtype)
    if normalize:
        x = F.normalize(x, dim=-1)
    if backend == "torch":
        w, b = _fit_torch(x, y.to(dev), num_classes, C, max_iter, tol, init)
    elif backend == "sklearn":
        w, b = _fit_sklearn(x, y, num_classes, C, max_iter, tol)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected 'torch' or 'sklearn'")
    return LinearClassifier(w.to(dev, dtype), b.to(dev, dtype), normalize=normalize)


def stratified_split(
    labels: Sequence[int] | torch.Tensor, fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices: about ``fraction`` of each class held out, at least one for a
    class with two or more examples, none for a class with one. Deterministic in ``seed``."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    kept: list[int] = []
    held: list[int] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)].tolist()
        n_held = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held += idx[:n_held]
        kept += idx[n_held:]
    return sorted(kept), sorted(held)


def search_regularization(
    evaluate: Callable[[float], tuple[float, float]],
    *,
    low: int = -6,
    high: int = 6,
    steps_per_decade: int = 8,
) -> tuple[float, list[dict[str, float]]]:
    """The paper's coarse-to-fine search for ``C``: returns (best C, trace of every fit).

    ``evaluate(C)`` returns a score to maximise and a tie-breaker to maximise (validation
    accuracy and minus validation loss). The grid starts at every second decade of
    ``10**low..10**high``; then, while the step is coarser than ``1/steps_per_decade``
    decade, the step halves and the two neighbours of the best value are tried.
    """
    scores: dict[float, tuple[float, float]] = {}

    def run(exponent: float) -> None:
        exponent = round(exponent, 6)
        if low <= exponent <= high and exponent not in scores:
            scores[exponent] = evaluate(10.0**exponent)

    for e in range(low, high + 1, 2):
        run(e)
    step = 2.0
    while step > 1.0 / steps_per_decade + 1e-9:
        step /= 2
        best = max(scores, key=lambda e: (scores[e], -e))  # ties: the stronger regularisation
        run(best - step)
        run(best + step)
    best = max(scores, key=lambda e: (scores[e], -e))
    trace = [
        {"C": 10.0**e, "log10_C": e, "score": s[0], "tiebreak": s[1]}
        for e, s in sorted(scores.items())
    ]
    return 10.0**best, trace


@dataclass
class ProbeResult:
    """A fitted probe, its chosen ``C`` and its metrics on the test set."""

    C: float
    val_accuracy: float | None
    metrics: dict[str, Any]
    classifier: LinearClassifier
    search: list[dict[str, float]] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "C": self.C,
            "val_accuracy": self.val_accuracy,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "search": self.search,
            "metrics": self.metrics,
        }


def select_C(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    *,
    backend: Backend = "torch",
    max_iter: int = 1000,
    device: str | torch.device | None = None,
) -> tuple[float, float, list[dict[str, float]]]:
    """(best C, its validation accuracy, search trace) by :func:`search_regularization`."""
    fits: dict[float, LinearClassifier] = {}
    val_y = torch.as_tensor(val_y, dtype=torch.long)

    def evaluate(C: float) -> tuple[float, float]:
        nearest = min(fits, key=lambda c: abs(math.log10(c / C))) if fits else None
        clf = fit_logistic_regression(
            train_x,
            train_y,
            num_classes=num_classes,
            C=C,
            backend=backend,
            max_iter=max_iter,
            device=device,
            init=fits[nearest] if nearest is not None and backend == "torch" else None,
        )
        fits[C] = clf
        logits = clf.logits(val_x)
        y = val_y.to(logits.device)
        accuracy = float((target_ranks(logits, y) == 0).double().mean())
        return accuracy, -float(F.cross_entropy(logits, y))

    best, trace = search_regularization(evaluate)
    best_acc = max(t["score"] for t in trace if t["C"] == best)
    return best, best_acc, trace


def linear_probe(
    train_x: torch.Tensor,
    train_y: Sequence[int] | torch.Tensor,
    test_x: torch.Tensor,
    test_y: Sequence[int] | torch.Tensor,
    *,
    num_classes: int,
    classnames: Sequence[str] | None = None,
    val_x: torch.Tensor | None = None,
    val_y: Sequence[int] | torch.Tensor | None = None,
    val_fraction: float = 0.2,
    C: float | None = None,
    refit: bool = True,
    seed: int = 0,
    backend: Backend = "torch",
    max_iter: int = 1000,
    device: str | torch.device | None = None,
) -> ProbeResult:
    """Fit a probe on train features, choose ``C`` on validation, report test metrics.

    Without ``val_x``, a stratified ``val_fraction`` of the training set is the validation
    split. With ``refit`` the final probe is fitted on train + validation with the chosen
    ``C``. A given ``C`` skips the search.
    """
    train_y = torch.as_tensor(train_y, dtype=torch.long)
    if val_x is None and C is not None:  # nothing to choose: fit on everything
        fit_x, fit_y = train_x, train_y
        val_x, val_y_t = train_x[:0], train_y[:0]
    elif val_x is None:
        kept, held = stratified_split(train_y, val_fraction, seed)
        if not held:
            raise ValueError(
                "no validation examples: every class has a single training example; "
                "pass C= or a validation set"
            )
        fit_x, fit_y = train_x[kept], train_y[kept]
        val_x, val_y_t = train_x[held], train_y[held]
    else:
        fit_x, fit_y = train_x, train_y
        val_y_t = torch.as_tensor(val_y, dtype=torch.long)
    search: list[dict[str, float]] = []
    val_accuracy = None
    if C is None:
        C, val_accuracy, search = select_C(
            fit_x,
            fit_y,
            val_x,
            val_y_t,
            num_classes,
            backend=backend,
            max_iter=max_iter,
            device=device,
        )
    if refit:
        fit_x, fit_y = torch.cat([fit_x, val_x]), torch.cat([fit_y, val_y_t])
    clf = fit_logistic_regression(
        fit_x,
        fit_y,
        num_classes=num_classes,
        C=C,
        backend=backend,
        max_iter=max_iter,
        device=device,
    )
    logits = clf.logits(test_x).float().cpu()
    metrics = classification_metrics(logits, test_y, classnames)
    return ProbeResult(
        C=C,
        val_accuracy=val_accuracy,
        metrics=metrics,
        classifier=clf,
        search=search,
        n_train=int(fit_y.numel()),
        n_val=int(val_y_t.numel()),
    )


def sample_shots(
    labels: Sequence[int] | torch.Tensor,
    k: int,
    seed: int,
    pool: Sequence[int] | None = None,
) -> list[int]:
    """Indices of ``k`` examples per class (all of a class's examples if it has fewer), drawn
    from ``pool`` (default: every index) with the given seed."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    pool_t = torch.as_tensor(pool if pool is not None else range(labels.numel()), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = pool_t[torch.randperm(pool_t.numel(), generator=generator)]
    chosen: list[int] = []
    counts: dict[int, int] = {}
    for i in order.tolist():
        c = int(labels[i])
        if counts.get(c, 0) < k:
            counts[c] = counts.get(c, 0) + 1
            chosen.append(i)
    return sorted(chosen)


@dataclass
class ProbeData:
    """Train and test features for a probe: from two sets, or a stratified split of one."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_set: ClassificationSet
    note: str
    test_index: list[int] | None = None


def probe_data(
    store: FeatureStore,
    test: ClassificationSet,
    train: ClassificationSet | None = None,
    *,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> ProbeData:
    """Features for probing: ``train`` -> ``test``; without ``train``, ``test`` is split per
    class (``test_fraction`` held out for testing; classes with one image stay in train)."""
    x, y = store.dataset(test), torch.as_tensor(test.labels, dtype=torch.long)
    if train is not None:
        if list(train.classnames) != list(test.classnames):
            raise ValueError(f"{train.name} and {test.name} have different class names")
        note = f"probe fitted on {train.name} ({len(train)} images), tested on {test.name}"
        train_y = torch.as_tensor(train.labels, dtype=torch.long)
        return ProbeData(store.dataset(train), train_y, x, y, test, note)
    fit, held = stratified_split(y, test_fraction, seed)
    if not held:
        raise ValueError(f"{test.name}: every class has one image; give a training set")
    note = (
        f"no training set given: {test.name} split per class into {len(fit)} probe-training "
        f"and {len(held)} test images (seed {seed})"
    )
    return ProbeData(x[fit], y[fit], x[held], y[held], test, note, test_index=held)
