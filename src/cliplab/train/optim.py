"""The optimiser and the learning-rate schedule, as the paper trains CLIP (and as
fine-tuning recipes adjust it: layer-wise learning-rate decay, no decay on embeddings).

- AdamW with decoupled weight decay on weights only: every parameter with fewer than two
  dimensions (LayerNorm/BatchNorm gains, biases, the logit scale, the ViT class embedding)
  is exempt. The rule is by shape, not by name.
- ``impl="auto"`` takes torch's fused AdamW where the device has it, else the foreach one.
- ``state_dtype="bfloat16"`` keeps the Adam statistics in bf16 (half the optimiser memory,
  as the paper's half-precision Adam statistics); the update is computed in fp32.
- Linear warm-up from 0 to ``lr`` then cosine decay to ``lr * min_lr_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from cliplab.train.config import OptimSection

#: Embedding tables (by the last part of the name), exempt from weight decay when
#: ``optim.embedding_decay`` is false: fine-tuning recipes do not shrink them.
EMBEDDINGS = ("class_embedding", "positional_embedding", "token_embedding", "word_embeddings")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    embedding_decay: bool = True,
) -> list[dict]:
    """AdamW groups over the trainable parameters: weights (ndim >= 2) with ``weight_decay``,
    gains, biases and the logit scale without (and the embeddings unless
    ``embedding_decay``); with ``layer_decay < 1`` each of those is split by layer group
    (:func:`cliplab.train.finetune.layer_groups`), its ``lr_scale`` ``layer_decay ** (last -
    group)``. The first group always has scale 1 (its lr is the schedule's)."""
    from cliplab.train.finetune import layer_groups

    layers = layer_groups(model) if layer_decay < 1 else {}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        embedding = any(part in EMBEDDINGS for part in name.split("."))
        decay = p.ndim >= 2 and (embedding_decay or not embedding)
        scale = 1.0
        if name in layers:
            _, group, total = layers[name]
            scale = layer_decay ** (total - 1 - group)
        groups.setdefault((decay, scale), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), params in groups.items()
    ]


class AdamW(torch.optim.Optimizer):
    """AdamW whose moment estimates are stored in ``state_dtype`` (bf16 by default).

    The arithmetic is torch's AdamW (decoupled decay, bias correction) done in fp32 on
    upcast copies; with ``state_dtype=torch.float32`` the result equals
    ``torch.optim.AdamW(foreach=False)`` exactly.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        state_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.state_dtype = state_dtype

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = (
                group["lr"],
                group["betas"],
                group["eps"],
                group["weight_decay"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype)
                state["step"] += 1
                step = float(state["step"])
                grad = p.grad.float()
                exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                exp_avg_sq = (
                    state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                )
                state["exp_avg"].copy_(exp_avg)
                state["exp_avg_sq"].copy_(exp_avg_sq)
                p.mul_(1 - lr * wd)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                step_size = lr / (1 - beta1**step)
                if p.dtype == torch.float32:
                    p.addcdiv_(exp_avg, denom, value=-step_size)
                else:
                    p.add_((exp_avg / denom * -step_size).to(p.dtype))
        return loss


def _fused_available(device_type: str) -> bool:
    try:
        probe = nn.Parameter(torch.zeros(1, device=device_type))
        torch.optim.AdamW([probe], fused=True)
        return True
    except (RuntimeError, ValueError, TypeError):
        return False


def build_optimizer(
    model: nn.Module, cfg: OptimSection, device_type: str = "cpu"
) -> torch.optim.Optimizer:
    """AdamW over ``param_groups(model)`` with the implementation ``cfg.impl`` asks for."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.embedding_decay)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.state_dtype == "bfloat16":
        return AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, state_dtype=torch.bfloat16)
    impl = cfg.impl
    if impl == "auto":
        impl = "fused" if _fused_available(device_type) else "foreach"
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **kwargs)


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> float:
    """The lr multiplier at ``step`` (0-based): linear ramp over ``warmup_steps``, then a
    half cosine from 1 to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``warmup_cosine``; its state is just the step, so a resumed run
    may change ``total_steps`` (the schedule is recomputed from the config)."""

    def multiplier(step: int) -> float:
        return warmup_cosine(step, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
