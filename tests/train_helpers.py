"""Shared pieces of the training tests: tiny configs, fixed batches, gradient capture."""

from __future__ import annotations

import copy
from typing import Any

import torch

import cliplab
from cliplab.train import Config, StepResult, Trainer

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_dict(**sections: Any) -> dict[str, Any]:
    """A tiny-vit run on a small synthetic set: quiet, no plots, no TensorBoard."""
    base = {
        "model": {"name": "tiny-vit"},
        "data": {
            "batch_size": 16,
            "shuffle_buffer": 32,
            "sources": [{"kind": "synthetic", "num_samples": 2000, "image_size": 32}],
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.1},
        "train": {"steps": 3, "threads": 1},
        "log": {"tensorboard": False, "progress": False, "plots": False},
    }
    return merge(base, sections)


def tiny_config(**sections: Any) -> Config:
    return Config.from_dict(tiny_dict(**sections))


def fixed_batch(n: int, seed: int = 0, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and captions of varied lengths (so padding trimming is exercised)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, image_size, image_size, generator=g)
    picks = torch.randint(0, 48, (n,), generator=g).tolist()
    captions = [
        f"a {COLORS[p % 8]} {SHAPES[p % 6]}" + " in the top left corner of the picture" * (i % 3)
        for i, p in enumerate(picks)
    ]
    return images, cliplab.tokenize(captions, truncate=True)


def capture_grads(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """Record the (synchronised, unscaled) gradients each step applies."""
    captured: list[dict[str, torch.Tensor]] = []
    original = trainer._apply_update

    def spy(loss: float, grad_norm: float) -> str | None:
        captured.append(
            {
                n: p.grad.detach().clone()
                for n, p in trainer.model.named_parameters()
                if p.grad is not None
            }
        )
        return original(loss, grad_norm)

    trainer._apply_update = spy  # type: ignore[method-assign]
    return captured


def run_steps(
    trainer: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[list[StepResult], list[dict[str, torch.Tensor]]]:
    grads = capture_grads(trainer)
    results = [trainer.train_step(images, tokens) for images, tokens in batches]
    return results, grads


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


SYNTHETIC_SOURCE = 'kind = "synthetic"\nnum_samples = 2000\nimage_size = 32'


def run_toml(
    source: str = SYNTHETIC_SOURCE,
    *,
    steps: int,
    interval: int,
    batch: int = 16,
    shuffle: int = 32,
    lr: float = 1e-3,
    warmup: int = 2,
    keep: int = 2,
) -> str:
    """A `cliplab train` TOML for the end-to-end tests (tiny-vit, deterministic, one thread,
    a log line every step, no TensorBoard or plots); ``source`` is the body of its one
    ``[[data.sources]]`` table."""
    return f"""
[model]
name = "tiny-vit"
[data]
batch_size = {batch}
shuffle_buffer = {shuffle}
[[data.sources]]
{source}
[optim]
lr = {lr}
warmup_steps = {warmup}
[train]
steps = {steps}
deterministic = true
threads = 1
[checkpoint]
interval = {interval}
keep = {keep}
[log]
interval = 1
tensorboard = false
plots = false
"""
