"""Building models and their transforms from preset names or configs."""

from __future__ import annotations

from typing import Any

import torch

from cliplab.config import CLIPConfig
from cliplab.models import CLIP
from cliplab.presets import get_config


def resolve_config(name_or_config: str | CLIPConfig, **overrides: Any) -> CLIPConfig:
    """A config from a preset name (``"ViT-B/32"``, ``"tiny-vit"``...) or a ``CLIPConfig``."""
    if isinstance(name_or_config, CLIPConfig):
        return name_or_config.replace(**overrides) if overrides else name_or_config
    if isinstance(name_or_config, str):
        return get_config(name_or_config, **overrides)
    raise TypeError(f"expected a model name or a CLIPConfig, got {type(name_or_config).__name__}")


def create_model(
    name_or_config: str | CLIPConfig,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> CLIP:
    """A randomly initialised model (OpenAI's initialisation).

    Build inside ``with torch.device("meta"):`` to inspect large models without memory.
    """
    model = CLIP(resolve_config(name_or_config, **overrides))
    return model.to(device=device, dtype=dtype) if (device or dtype) else model


def create_model_and_transforms(
    name_or_config: str | CLIPConfig,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> tuple[CLIP, Any, Any]:
    """``model, train_transform, eval_transform`` (OpenCLIP's convention; the train transform
    is cliplab's training augmentation for one image, :class:`cliplab.augment.TrainTransform`)."""
    from cliplab.augment import TrainTransform
    from cliplab.presets import PRESET_PREPROCESS, canonical_name
    from cliplab.transforms import EvalTransform

    model = create_model(name_or_config, device=device, dtype=dtype, **overrides)
    size = model.config.vision.image_size
    name = canonical_name(name_or_config) if isinstance(name_or_config, str) else None
    preprocess = PRESET_PREPROCESS.get(name, {}) if name else {}  # SigLIP's: squash, 0.5
    return model, TrainTransform(size), EvalTransform(size, **preprocess)
