"""Few-shot linear probes against zero-shot (the paper's Figure 6, at our scale).

For each k in ``shots``, k training examples per class are drawn (one draw per seed), a
logistic-regression probe is fitted on their frozen features and tested; the curve is the
mean and standard deviation over seeds. The regularisation of each probe is chosen on a
validation split held out of the training pool before drawing, disjoint from every draw:
more than a true k-shot learner could use, so the probe curve is an upper bound and the
comparison favours the probe, not zero-shot. ``matched_shots`` is where the curve crosses
zero-shot accuracy (linear in log2 k), the paper's "zero-shot CLIP matches a 4-shot probe".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cliplab.evaluation.linear_probe import Backend, linear_probe, stratified_split
from cliplab.evaluation.progress import progress_bar

__all__ = ["FewShotResult", "few_shot_curve", "matching_shots", "sample_shots"]

DEFAULT_SHOTS = (1, 2, 4, 8, 16)


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


def matching_shots(shots: Sequence[int], means: Sequence[float], target: float) -> float | None:
    """The k at which the curve reaches ``target``, interpolated linearly in log2 k.

    ``None`` when no k reaches it (zero-shot beats every probe); ``shots[0]`` when the
    smallest k already does (read it as "at most ``shots[0]``").
    """
    points = list(zip(shots, means))
    if not points:
        return None
    if points[0][1] >= target:
        return float(points[0][0])
    for (k0, a0), (k1, a1) in zip(points, points[1:]):
        if a0 < target <= a1:
            t = (target - a0) / (a1 - a0)
            return 2.0 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))
    return None


@dataclass
class FewShotResult:
    """Per-k test accuracy (mean, std, each run) and the zero-shot reference."""

    shots: list[int]
    seeds: list[int]
    runs: dict[int, list[dict[str, Any]]]
    zero_shot: float | None = None
    metric: str = "top1"
    extra: dict[str, Any] = field(default_factory=dict)

    def mean(self, k: int) -> float:
        return float(torch.tensor([r[self.metric] for r in self.runs[k]]).mean())

    def std(self, k: int) -> float:
        values = torch.tensor([r[self.metric] for r in self.runs[k]], dtype=torch.float64)
        return float(values.std(unbiased=True)) if values.numel() > 1 else 0.0

    @property
    def matched_shots(self) -> float | None:
        if self.zero_shot is None:
            return None
        return matching_shots(self.shots, [self.mean(k) for k in self.shots], self.zero_shot)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "shots": self.shots,
            "seeds": self.seeds,
            "zero_shot": self.zero_shot,
            "matched_shots": self.matched_shots,
            "curve": {
                str(k): {"mean": self.mean(k), "std": self.std(k), "runs": self.runs[k]}
                for k in self.shots
            },
            **self.extra,
        }


def few_shot_curve(
    train_x: torch.Tensor,
    train_y: Sequence[int] | torch.Tensor,
    test_x: torch.Tensor,
    test_y: Sequence[int] | torch.Tensor,
    *,
    num_classes: int,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    zero_shot: float | None = None,
    val_fraction: float = 0.2,
    C: float | None = None,
    backend: Backend = "torch",
    max_iter: int = 1000,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> FewShotResult:
    """Test accuracy of k-shot probes for each k and seed (see the module docstring).

    With a fixed ``C`` no validation split is held out and no search runs.
    """
    train_y = torch.as_tensor(train_y, dtype=torch.long)
    test_y = torch.as_tensor(test_y, dtype=torch.long)
    if C is None:
        pool, held = stratified_split(train_y, val_fraction, seed=12345)
        if not held:
            raise ValueError("no validation examples for choosing C: pass C=")
        val_x, val_y = train_x[held], train_y[held]
    else:
        pool, val_x, val_y = list(range(train_y.numel())), None, None
    runs: dict[int, list[dict[str, Any]]] = {k: [] for k in shots}
    jobs = [(k, s) for k in shots for s in seeds]
    for k, seed in progress_bar(jobs, total=len(jobs), desc="few-shot probes", enabled=progress):
        idx = sample_shots(train_y, k, seed, pool)
        result = linear_probe(
            train_x[idx],
            train_y[idx],
            test_x,
            test_y,
            num_classes=num_classes,
            val_x=val_x,
            val_y=val_y,
            C=C,
            refit=False,
            backend=backend,
            max_iter=max_iter,
            device=device,
        )
        runs[k].append(
            {
                "seed": seed,
                "n_train": len(idx),
                "C": result.C,
                "top1": result.metrics["top1"],
                "top5": result.metrics["top5"],
                "mean_per_class_recall": result.metrics["mean_per_class_recall"],
            }
        )
    return FewShotResult(shots=list(shots), seeds=list(seeds), runs=runs, zero_shot=zero_shot)
