"""Fine-tuning levers of the trainer: start from pretrained weights, lock towers, group
layers for layer-wise learning-rate decay, and keep a moving average of the weights.

Applied from outside the model, like parallelism: the model classes know nothing of them.

- :func:`run_model` builds a run's model: random (a preset) or ``[model] pretrained`` (any
  checkpoint ``cliplab.load`` reads, by path or name). A pretrained run records the model it
  built in ``OUTPUT/pretrained.json`` (and the tokenizer files, if the model reads its own)
  so that a resumed run rebuilds it from there and takes the weights from its own
  checkpoint, never from the source again.
- :func:`layer_groups` numbers each tower's parameters as OpenCLIP's ``lock`` groups them:
  the embeddings (group 0), one group per block, the last block with the final LayerNorm,
  the projection (and attention-pooling head) last. :func:`lock_towers` freezes all but the
  last N groups; the optimiser's layer-wise decay (:mod:`cliplab.train.optim`) scales each
  group's learning rate by ``decay ** (last - group)``.
- :class:`WeightAverage` is the exponential moving average of the weights
  (``train.ema_decay``), kept in fp32, checkpointed, evaluated and saved beside the weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cliplab.checkpoints.api import load_checkpoint, load_weights
from cliplab.config import CLIPConfig
from cliplab.factory import create_model
from cliplab.fileio import write_json
from cliplab.models import CLIP
from cliplab.tokenizer.files import OPENAI, attach_tokenizer, copy_files
from cliplab.train.config import ModelSection

#: What a pretrained run records of the model it built (read back when it resumes).
PRETRAINED_FILE = "pretrained.json"
TOKENIZER_DIR = "pretrained-tokenizer"
TOWERS = ("visual", "text")

# a block of a tower: transformer blocks (ours, transformers' encoders), ResNet bottlenecks
_BLOCK = re.compile(r"\.(?:resblocks|layers?|blocks)\.(\d+)\.")
_RESNET_BLOCK = re.compile(r"^visual\.layer(\d)\.(\d+)\.")
# outside the blocks, after them: the final norm goes with the last block (OpenCLIP), the
# projection and pooling heads form the last group
_FINAL_NORM = ("ln_post", "ln_final", "final_layer_norm", "post_layernorm")
_HEAD = ("proj", "text_projection", "attn_pool", "attnpool", "head", "pooler")


@dataclass(frozen=True)
class PretrainedRecord:
    """The model a pretrained run started from: its source, config and preprocessing."""

    source: str
    config: CLIPConfig
    preprocess: dict[str, Any]


def _apply_settings(base: CLIPConfig, settings: dict[str, Any], source: str) -> CLIPConfig:
    """``base`` with the run's model settings, refused where a weight would change shape."""
    if not settings:
        return base
    try:
        changed = base.replace(**settings)
    except ValueError as e:
        raise ValueError(f"[model] settings on the pretrained {source}: {e}") from None
    with torch.device("meta"):
        before, after = CLIP(base).state_dict(), CLIP(changed).state_dict()
    moved = sorted(
        k
        for k in before.keys() | after.keys()
        if k not in before or k not in after or before[k].shape != after[k].shape
    )
    if moved:
        raise ValueError(
            f"[model] settings {', '.join(sorted(settings))} would change the shape of the "
            f"pretrained weights of {source} ({', '.join(moved[:3])}"
            f"{', ...' if len(moved) > 3 else ''}); a fine-tune keeps the checkpoint's "
            "architecture: only settings that keep every weight's shape may change "
            "(vision.patch_dropout, text.length_groups, ...)"
        )
    return changed


def _read_record(output: Path) -> PretrainedRecord | None:
    path = output / PRETRAINED_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    config = CLIPConfig.from_dict(data["config"])
    if config.text.tokenizer != OPENAI:  # the tokenizer files the run copied
        config = attach_tokenizer(config, output / TOKENIZER_DIR, needs_files=True)
    return PretrainedRecord(data["source"], config, data.get("preprocess", {}))


def run_model(
    section: ModelSection, output: Path, resuming: bool, is_main: bool = True
) -> tuple[CLIP, dict[str, Any]]:
    """``(model, preprocessing hints)`` of a run: a preset's random model, or the pretrained
    weights of ``section.pretrained`` (with the run's settings); when ``resuming`` a
    pretrained run, its recorded model with untouched weights (the checkpoint holds them)."""
    if not section.pretrained:
        return create_model(section.model_config()), {}
    record = _read_record(output) if resuming else None
    if record is not None:
        if record.source != section.pretrained:
            raise ValueError(
                f"{output} holds a fine-tune of {record.source}, not of {section.pretrained}: "
                "use another output directory"
            )
        return create_model(record.config), record.preprocess
    base, weights, preprocess = load_checkpoint(section.pretrained)
    config = _apply_settings(base, section.settings, section.pretrained)
    with torch.device("meta"):
        model = CLIP(config)
    model = model.to_empty(device="cpu")
    load_weights(model, weights, section.pretrained)
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
        if config.text.tokenizer != OPENAI:
            (output / TOKENIZER_DIR).mkdir(exist_ok=True)
            copy_files(config.text.tokenizer, output / TOKENIZER_DIR)
        record = {"source": section.pretrained, "config": config.to_dict()}
        write_json(output / PRETRAINED_FILE, {**record, "preprocess": preprocess})
    return model, preprocess


# -- groups, locks -----------------------------------------------------------------------
def layer_groups(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """``{parameter name: (tower, group, number of groups)}`` for the parameters of the two
    towers, numbered as OpenCLIP's ``lock`` numbers them: the embeddings and stem 0, block
    ``i`` (0-based) ``i + 1``, the final LayerNorm with the last block, the projection and
    pooling head last. The logit scale and bias belong to no tower."""
    raw: dict[str, tuple[str, str, int]] = {}
    blocks: dict[str, set[tuple[int, int]]] = {t: set() for t in TOWERS}
    for name, _ in model.named_parameters():
        tower = name.split(".", 1)[0]
        if tower not in TOWERS:
            continue
        resnet = _RESNET_BLOCK.match(name)
        block = _BLOCK.search(name)
        if resnet:
            index = (int(resnet.group(1)), int(resnet.group(2)))
        elif block:
            index = (0, int(block.group(1)))
        else:
            leaf = name.split(".")[1] if name.count(".") else name
            kind = "final" if leaf in _FINAL_NORM else "head" if leaf in _HEAD else "stem"
            raw[name] = (tower, kind, 0)
            continue
        blocks[tower].add(index)
        raw[name] = (tower, "block", index[0] * 10_000 + index[1])
    order = {
        t: {b[0] * 10_000 + b[1]: i for i, b in enumerate(sorted(bs))} for t, bs in blocks.items()
    }
    groups: dict[str, tuple[str, int, int]] = {}
    for name, (tower, kind, index) in raw.items():
        n_blocks = len(order[tower])
        total = n_blocks + 2  # stem, blocks..., head
        if kind == "stem":
            group = 0
        elif kind == "block":
            group = order[tower][index] + 1
        elif kind == "final":
            group = max(n_blocks, 1)
        else:
            group = total - 1
        groups[name] = (tower, group, total)
    return groups


def lock_towers(model: nn.Module, section: ModelSection) -> dict[str, int]:
    """Freeze the towers ``section`` locks (``requires_grad = False``) but for their last
    unlocked groups; a locked BatchNorm keeps its running statistics (it normalises as in
    evaluation). Returns the number of frozen parameters (elements) per tower."""
    keep = {
        "visual": section.lock_image_unlocked_groups if section.lock_image else None,
        "text": section.lock_text_unlocked_layers if section.lock_text else None,
    }
    frozen = {tower: 0 for tower in TOWERS}
    params = dict(model.named_parameters())
    for name, (tower, group, total) in layer_groups(model).items():
        unlocked = keep[tower]
        if unlocked is None or group >= total - unlocked:
            continue
        params[name].requires_grad_(False)
        frozen[tower] += params[name].numel()
    for tower in TOWERS:
        if keep[tower] is None:
            continue
        for module in getattr(model, tower).modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.register_forward_pre_hook(_evaluation_mode)
    return frozen


def _evaluation_mode(module: nn.Module, args: Any) -> None:
    module.training = False  # running statistics used, never updated


# -- the moving average ------------------------------------------------------------------
class WeightAverage:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimiser step, over the
    model's floating-point state (parameters and buffers), in fp32. Frozen parameters (a
    locked tower) are copied once and never averaged again: their average is themselves."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {
            k: v.detach().float().clone()
            for k, v in model.state_dict().items()
            if v.is_floating_point()
        }
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        self.moving = [k for k in self.state if k not in frozen]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if not self.moving:
            return
        current = model.state_dict()
        torch._foreach_lerp_(
            [self.state[k] for k in self.moving],
            [current[k].detach().float() for k in self.moving],
            1.0 - self.decay,
        )

    def copy_into(self, model: nn.Module) -> nn.Module:
        """``model`` with the averaged weights loaded (the caller's copy)."""
        model.load_state_dict(self.state, strict=False)
        return model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.state) - set(state)
        if missing:
            raise ValueError(f"the checkpoint's weight average lacks {sorted(missing)[:3]}")
        self.state = {k: state[k].float().clone() for k in self.state}
