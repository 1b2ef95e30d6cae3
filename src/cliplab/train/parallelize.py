"""Memory and speed options applied to a model from outside its files (as torchtitan's
``parallelize``): activation checkpointing, ``torch.compile``, DDP and FSDP2.

The model files stay architecture-only, and the state-dict keys never change: checkpointing
replaces each block's ``forward`` on the instance, and compile/DDP wrap ``Towers``, a view
of the two encoders, while checkpoints are taken from the bare ``CLIP``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from cliplab.models import CLIP, ModifiedResNet, VisionTransformer
from cliplab.models.text import trim_padding
from cliplab.train.config import TrainSection


class Towers(nn.Module):
    """The two encoders as one module, ``(images, tokens) -> (image, text features)``
    (unnormalised): what DDP and ``torch.compile`` wrap.

    The logit scale is not part of it: it is used by the loss, outside the encoders' forward
    (where DDP cannot see it), so the trainer averages its gradient across ranks itself.
    """

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.visual = model.visual
        self.text = model.text

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.visual(images), self.text(tokens)  # (B, E), (B, E)


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # nothing to save memory on: plain call
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def block_units(model: CLIP, resnet_stages: bool = False) -> list[nn.Module]:
    """The units that activation checkpointing wraps and FSDP shards one by one: every
    transformer block of both towers; for a ResNet image tower, every bottleneck (or, with
    ``resnet_stages``, each of its four stages)."""
    blocks: list[nn.Module] = list(model.text.transformer.resblocks)
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        blocks += list(visual.transformer.resblocks)
    elif isinstance(visual, ModifiedResNet):
        stages = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
        blocks += stages if resnet_stages else [b for stage in stages for b in stage]
    else:
        raise TypeError(f"no rule for the blocks of image tower {type(visual).__name__}")
    return blocks


def apply_gradient_checkpointing(model: CLIP) -> int:
    """Recompute each block's activations in the backward instead of storing them.

    Returns the number of blocks wrapped. Keys and weights are untouched. Note: a
    BatchNorm block (ResNet) updates its running statistics again when recomputed.
    """
    blocks = block_units(model)
    for block in blocks:
        if not isinstance(block.forward, functools.partial):  # idempotent
            block.forward = functools.partial(_checkpointed, block.forward)  # type: ignore[method-assign]
    return len(blocks)


def compile_towers(towers: nn.Module, model: CLIP, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` the encoders. The text tower's own padding trim (a data-dependent
    length) is turned off inside the graph; the trainer trims each batch's tokens before the
    call instead, and the text length is compiled as a dynamic dimension."""
    model.text.length_groups = 0  # static shapes for the compiler; trim_tokens cuts the batch
    return torch.compile(towers, backend=backend)


def trim_tokens(tokens: torch.Tensor, compiled: bool, exact: bool = True) -> torch.Tensor:
    """The batch's tokens cut after the last EOT (exact; see ``models.text.trim_padding``),
    marked as dynamic in length for a compiled model, so one graph serves every length.
    ``exact=False`` (a bidirectional tower, or one read at the last position: SigLIP's)
    keeps the whole padded length."""
    if not exact:
        return tokens
    tokens = trim_padding(tokens)
    if compiled:
        torch._dynamo.mark_dynamic(tokens, 1)
    return tokens


def wrap_ddp(towers: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the encoders (gradients averaged across ranks)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(towers, device_ids=device_ids)


def parallelize(
    model: CLIP, train: TrainSection, distributed: bool, device: torch.device, precision: str
) -> tuple[Towers, nn.Module]:
    """Apply a run's ``[train]`` options to the model from outside it: activation
    checkpointing, compile, then DDP or FSDP2 (``train.parallelism``) when several processes
    train. Returns the plain towers (GradCache re-runs them) and the ones a step calls."""
    if train.grad_checkpointing:
        apply_gradient_checkpointing(model)
    plain = Towers(model)
    towers: nn.Module = plain
    if train.compile:
        towers = compile_towers(towers, model, train.compile_backend)
    if distributed and train.parallelism == "fsdp":
        towers = apply_fsdp(plain, model, precision)
    elif distributed:
        towers = wrap_ddp(towers, device)
    return plain, towers


def apply_fsdp(towers: Towers, model: CLIP, precision: str = "fp32") -> nn.Module:
    """FSDP2 (``fully_shard``): each unit of :func:`block_units` (ResNet: its stages) is
    sharded on its own
    (gathered just before its forward and backward, freed after), the rest of the towers as
    the root unit. Parameters stay fp32 masters; with ``precision`` bf16/fp16 they are
    gathered and computed in that dtype, gradients reduced in fp32. The logit scale and bias
    are not in the towers: they stay replicated (the trainer averages their gradients)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for unit in block_units(model, resnet_stages=True):
        fully_shard(unit, mp_policy=policy)
    fully_shard(towers, mp_policy=policy)
    return towers


def sharded_bytes_per_rank(
    model: nn.Module, world_size: int, optimizer_states: int = 2
) -> dict[str, float]:
    """Parameter, gradient and AdamW-state bytes one rank holds (fp32), replicated (DDP) vs
    sharded on dim 0 as FSDP2 does (each tensor padded to a multiple of ``world_size`` rows);
    works on a model built on the meta device."""
    full = sharded = 0
    for p in model.parameters():
        n = p.numel()
        full += n
        if p.dim() == 0:
            sharded += n
            continue
        rows = p.shape[0]
        per_row = n // max(rows, 1)
        sharded += -(-rows // world_size) * per_row
    per = 4 * (2 + optimizer_states)  # param + grad + states, fp32
    return {
        "parameters": full,
        "ddp_bytes": full * per,
        "fsdp_bytes": sharded * per,
        "fsdp_param_bytes": sharded * 4,
        "fsdp_optimizer_bytes": sharded * 4 * optimizer_states,
    }


def sharded_grad_norm(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """The global gradient norm over sharded (DTensor) and replicated gradients, clipped to
    ``clip`` as ``clip_grad_norm_`` does (coefficient max / (norm + 1e-6), at most 1)."""
    from torch.distributed.tensor import DTensor

    sharded = torch.zeros((), dtype=torch.float64)
    replicated = torch.zeros((), dtype=torch.float64)
    for p in params:
        g = p.grad
        if isinstance(g, DTensor):
            sharded += g.to_local().double().pow(2).sum()
        else:
            replicated += g.double().pow(2).sum()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sharded)
    norm = (sharded + replicated).sqrt().float()
    if clip > 0:
        coefficient = torch.clamp(clip / (norm + 1e-6), max=1.0)
        for p in params:
            g = p.grad
            (g.to_local() if isinstance(g, DTensor) else g).mul_(coefficient)
    return norm


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of a model with FSDP units, on the CPU (collective: every rank
    calls it; each gets the whole)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
