"""CLIP_benchmark's linear probe, step for step: a linear layer on L2-normalised frozen
features trained with AdamW and a cosine learning rate (no warm-up), cross-entropy, for
``epochs`` passes over shuffled batches; the weight decay searched on a validation split
when there is one (97 values from 1e-6 to 1e2, coarse then fine), else 0.

The paper's own probe (L-BFGS logistic regression, :mod:`cliplab.evaluation.probe`) is
cliplab's default; this one is there to give CLIP_benchmark's numbers
(``cliplab eval linear-probe --recipe clip_benchmark``). Its random choices (which examples
a few-shot probe keeps, the initial weights, the order of batches) are drawn from torch's
global generator in the order CLIP_benchmark draws them, from ``torch.manual_seed(seed)``
set just before: CLIP_benchmark seeds once when it starts and draws the same numbers when
nothing else consumed the generator in between (``tests/test_clip_benchmark.py`` checks
the numbers are equal under that condition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["AdamWProbeResult", "adamw_probe"]


class _Features(Dataset):
    def __init__(self, features: Any, targets: Any) -> None:
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.features[i], self.targets[i]


def _loader(features: Any, targets: Any, batch_size: int) -> DataLoader:
    return DataLoader(_Features(features, targets), batch_size=batch_size, shuffle=True)


def _train(loader: DataLoader, dim: int, classes: int, weight_decay: float, lr: float,
           epochs: int, seed: int) -> torch.nn.Module:  # fmt: skip
    torch.manual_seed(seed)
    model = torch.nn.Linear(dim, classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * len(loader)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            step = i + epoch * len(loader)
            for group in optimizer.param_groups:  # cosine, no warm-up
                group["lr"] = 0.5 * (1 + np.cos(np.pi * step / steps)) * lr
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def _infer(model: torch.nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    logits, targets = [], []
    for x, y in loader:
        logits.append(model(x))
        targets.append(y)
    return torch.cat(logits), torch.cat(targets)


def _top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == targets).float().mean())


@dataclass
class AdamWProbeResult:
    logits: torch.Tensor  # (N_test, C), in the order the test loader gave them
    targets: torch.Tensor
    weight_decay: float
    search: list[dict[str, float]]
    n_train: int


def adamw_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    lr: float = 0.1,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    fewshot_k: int = -1,
    normalize: bool = True,
) -> AdamWProbeResult:
    """Train and test CLIP_benchmark's probe on image features (see the module docstring)."""
    if normalize:
        train_x, test_x = F.normalize(train_x.float(), dim=-1), F.normalize(test_x.float(), dim=-1)
        if val is not None:
            val = (F.normalize(val[0].float(), dim=-1), val[1])
    train_y, test_y = train_y.long(), test_y.long()
    torch.manual_seed(seed)
    perm = [int(p) for p in torch.randperm(len(train_x))]
    counts: dict[int, int] = {}
    keep = []
    for p in perm:
        label = int(train_y[p])
        counts.setdefault(label, 0)
        if fewshot_k < 0 or counts[label] < fewshot_k:
            counts[label] += 1
            keep.append(p)
    if fewshot_k > 0 and any(c != fewshot_k for c in counts.values()):
        raise ValueError(f"fewer than {fewshot_k} training examples in some class")
    features, labels = train_x[keep], train_y[keep]
    dim, classes = int(train_x.shape[1]), int(train_y.max()) + 1
    train_loader = _loader(features, labels, batch_size)
    test_loader = _loader(test_x, test_y, batch_size)
    search: list[dict[str, float]] = []
    weight_decay = 0.0
    if val is not None:
        val_loader = _loader(val[0], val[1].long(), batch_size)
        both = _loader(
            np.concatenate((features, val[0])), np.concatenate((labels, val[1].long())), batch_size
        )
        grid = np.logspace(-6, 2, num=97).tolist()
        coarse = np.logspace(-6, 2, num=7).tolist()

        def peak(indices: list[int]) -> int:
            best, best_acc = 0, 0.0
            for idx in indices:
                model = _train(train_loader, dim, classes, grid[idx], lr, epochs, seed)
                acc = _top1(*_infer(model, val_loader))
                search.append({"weight_decay": grid[idx], "val_top1": acc})
                if best_acc < acc:
                    best, best_acc = idx, acc
            return best

        index = peak([i for i, v in enumerate(grid) if v in coarse])
        span = 8
        while span > 0:
            index = peak([max(index - span, 0), index, min(index + span, len(grid) - 1)])
            span //= 2
        weight_decay = grid[index]
        if fewshot_k < 0:
            train_loader = both  # the full probe trains on train + val at the end
    final = _train(train_loader, dim, classes, weight_decay, lr, epochs, seed)
    logits, targets = _infer(final, test_loader)
    if not math.isfinite(float(logits.sum())):
        raise ValueError("the probe diverged (non-finite logits): lower the learning rate")
    return AdamWProbeResult(logits, targets, weight_decay, search, len(keep))
