"""Weight-space ensembles (WiSE-FT, Wortsman et al. 2022): ``(1 - alpha) A + alpha B``.

Interpolating a zero-shot model (A) and its fine-tuned copy (B) keeps most of the
fine-tuned accuracy on the task and most of the zero-shot robustness to distribution shift.
Both checkpoints may be in any format :func:`cliplab.load` reads; they must be the same
architecture (the same weights with the same shapes: a model and a fine-tune of it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cliplab.checkpoints.api import load_checkpoint, load_weights
from cliplab.checkpoints.errors import CheckpointError
from cliplab.config import CLIPConfig
from cliplab.models import CLIP

__all__ = ["MergeInputs", "interpolate", "read_pair"]


@dataclass(frozen=True)
class MergeInputs:
    """Two checkpoints' weights, checked to be the same architecture."""

    config: CLIPConfig
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    preprocess: dict[str, Any]


def read_pair(
    a: str | os.PathLike[str], b: str | os.PathLike[str], **overrides: Any
) -> MergeInputs:
    """Read both checkpoints; ``CheckpointError`` naming the first difference when they are
    not the same architecture. The result carries B's config (its settings, such as patch
    dropout, are those of the fine-tune) and A's preprocessing."""
    config_a, sd_a, preprocess = load_checkpoint(a, **overrides)
    config_b, sd_b, _ = load_checkpoint(b, **overrides)
    if set(sd_a) != set(sd_b):
        only = sorted(set(sd_a) ^ set(sd_b))
        raise CheckpointError(
            f"{a} and {b} are different architectures (weights only one has: {only[:3]})"
        )
    for key in sorted(sd_a):
        ta, tb = sd_a[key], sd_b[key]
        if ta.shape != tb.shape:
            raise CheckpointError(
                f"{a} and {b} are different architectures: {key} is {tuple(ta.shape)} in one "
                f"and {tuple(tb.shape)} in the other"
            )
        if not ta.is_floating_point() and not torch.equal(ta, tb):
            raise CheckpointError(f"{a} and {b} differ in {key}, which cannot be interpolated")
    if config_a.vision.kind != config_b.vision.kind or config_a.embed_dim != config_b.embed_dim:
        raise CheckpointError(f"{a} and {b} are different architectures")
    return MergeInputs(config_b, sd_a, sd_b, preprocess)


def interpolate(inputs: MergeInputs, alpha: float) -> CLIP:
    """The model ``(1 - alpha) A + alpha B`` (float weights interpolated in fp32 and stored
    in B's dtype; other tensors, equal in both, copied)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    merged = {}
    for key, tb in inputs.b.items():
        ta = inputs.a[key]
        if tb.is_floating_point():
            merged[key] = torch.lerp(ta.float(), tb.float(), alpha).to(tb.dtype)
        else:
            merged[key] = tb.clone()
    with torch.device("meta"):
        model = CLIP(inputs.config)
    model = model.to_empty(device="cpu")
    load_weights(model, merged, f"merge(alpha={alpha})")
    return model.eval()


def sweep(inputs: MergeInputs, alphas: Sequence[float]) -> Iterator[tuple[float, CLIP]]:
    """``(alpha, model)`` for each alpha, one model at a time."""
    for alpha in alphas:
        yield alpha, interpolate(inputs, alpha)
