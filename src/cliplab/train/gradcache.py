"""Gradient accumulation that keeps the whole contrastive batch (GradCache, Gao et al. 2021).

Accumulating the loss over micro-batches would shrink the contrastive batch (each
micro-batch only sees its own negatives). GradCache keeps the loss over the full batch:

1. embed every micro-batch without an autograd graph (activation memory of one micro-batch);
2. compute the loss on all the features at once and back-propagate it to the features
   (and to the logit scale), which are leaves;
3. re-run each micro-batch with a graph and back-propagate its slice of the feature
   gradients (``torch.autograd.backward(features, grads)``).

The parameter gradients equal those of one step over the full batch (up to float
rounding), for any number of micro-batches. The model is run twice per step: the price.
Models with BatchNorm (the ResNets) normalise per micro-batch, which no accumulation can
avoid; their running statistics are updated once, by the second pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

#: (image_features, text_features) -> scalar loss; normalisation and the scale inside.
FeatureLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep their running statistics unchanged inside this block."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            tracked = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, tracked))
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def gradcache_backward(
    towers: nn.Module,
    plain_towers: nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    micro_batches: int,
    loss_fn: FeatureLoss,
    autocast: Callable[[], contextlib.AbstractContextManager],
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Accumulate the full-batch gradients into ``.grad``; returns the (detached) loss.

    ``towers`` maps ``(images, tokens)`` to unnormalised features and may be DDP-wrapped
    (``no_sync`` then defers the gradient all-reduce to the last micro-batch);
    ``plain_towers`` is the same module unwrapped, used for the graph-free first pass.
    ``scale_loss`` applies fp16 loss scaling before the first backward.
    """
    image_chunks = images.chunk(micro_batches)
    token_chunks = tokens.chunk(micro_batches)
    if len(image_chunks) != micro_batches:
        raise ValueError(
            f"a batch of {images.shape[0]} cannot be split into {micro_batches} micro-batches"
        )
    # 1. features of every micro-batch, no graph
    with torch.no_grad(), frozen_batchnorm_stats(plain_towers), autocast():
        cached = [plain_towers(i, t) for i, t in zip(image_chunks, token_chunks)]
    image_features = torch.cat([f[0] for f in cached]).float().requires_grad_()  # (B, E)
    text_features = torch.cat([f[1] for f in cached]).float().requires_grad_()  # (B, E)
    del cached
    # 2. loss over the whole batch, gradients w.r.t. the features (and the logit scale)
    loss = loss_fn(image_features, text_features)
    scale_loss(loss).backward()
    image_grads = image_features.grad.split([c.shape[0] for c in image_chunks])
    text_grads = text_features.grad.split([c.shape[0] for c in token_chunks])
    # 3. replay each micro-batch with a graph and push its feature gradients through it
    for k, (i, t) in enumerate(zip(image_chunks, token_chunks)):
        sync = contextlib.nullcontext() if k == micro_batches - 1 else no_sync()
        with sync:
            with autocast():
                fi, ft = towers(i, t)
            torch.autograd.backward([fi.float(), ft.float()], [image_grads[k], text_grads[k]])
    return loss.detach()
