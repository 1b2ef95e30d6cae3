"""OpenAI / OpenCLIP state dicts: key renaming and architecture inference from shapes.

OpenAI's released checkpoints and OpenCLIP's CLIP checkpoints share one key layout: the
image tower under ``visual.`` and the text tower at the root (``token_embedding.weight``,
``transformer.resblocks.N...``). cliplab keeps the text tower under ``text.``; these
functions convert between the two and infer a ``CLIPConfig`` from the weight shapes, as
OpenAI's ``build_model`` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from cliplab.checkpoints.errors import CheckpointError
from cliplab.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig

#: Root-level keys of OpenAI's layout that belong to the text tower.
_TEXT_ROOT = (
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
)
#: Entries of OpenAI's TorchScript archives that are metadata, not weights.
_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
#: Prefixes added by wrappers: DDP (``module.``) and torch.compile (``_orig_mod.``).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``module.`` / ``_orig_mod.`` prefixes shared by every key."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def is_openai_layout(state_dict: Mapping[str, Any]) -> bool:
    return "token_embedding.weight" in state_dict and (
        "visual.proj" in state_dict or "visual.attnpool.c_proj.weight" in state_dict
    )


def is_cliplab_layout(state_dict: Mapping[str, Any]) -> bool:
    return "text.token_embedding.weight" in state_dict


def from_openai(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI/OpenCLIP keys -> cliplab keys (drops OpenAI's metadata entries)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _METADATA_KEYS or key.endswith("attn_mask"):
            continue
        out[f"text.{key}" if key.startswith(_TEXT_ROOT) else key] = value
    return out


def to_openai(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cliplab keys -> OpenAI keys (the layout OpenAI's ``build_model`` reads)."""
    return {(k[len("text.") :] if k.startswith("text.") else k): v for k, v in state_dict.items()}


def _require(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"not a CLIP state dict in OpenAI's layout: missing key {key!r}")
    return sd[key]


def _count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointError(f"blocks under {prefix!r} are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def infer_config(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> CLIPConfig:
    """The ``CLIPConfig`` of an OpenAI-layout state dict, from its shapes.

    What shapes cannot tell is taken from OpenAI's conventions: 64-wide attention heads and
    QuickGELU. OpenCLIP models trained with GELU need ``activation="gelu"``; models with
    other head widths need the settings ``vision.heads`` / ``text.heads``.
    """
    sd = state_dict
    embed_dim = _require(sd, "text_projection").shape[1]
    if "visual.proj" in sd:
        conv = _require(sd, "visual.conv1.weight")  # (width, 3, patch, patch)
        width, patch = conv.shape[0], conv.shape[-1]
        positions = _require(sd, "visual.positional_embedding").shape[0]
        grid = round((positions - 1) ** 0.5)
        if grid * grid + 1 != positions:
            raise CheckpointError(
                f"visual.positional_embedding has {positions} rows, not grid**2 + 1"
            )
        fc = _require(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight")
        vision: ViTConfig | ResNetConfig = ViTConfig(
            image_size=patch * grid,
            patch_size=patch,
            width=width,
            layers=_count_blocks(sd, "visual.transformer.resblocks."),
            heads=max(width // 64, 1),
            mlp_ratio=fc.shape[0] / width,
        )
    elif "visual.attnpool.positional_embedding" in sd:
        width = _require(sd, "visual.layer1.0.conv1.weight").shape[0]
        positions = sd["visual.attnpool.positional_embedding"].shape[0]
        grid = round((positions - 1) ** 0.5)
        if grid * grid + 1 != positions:
            raise CheckpointError(
                f"visual.attnpool.positional_embedding has {positions} rows, not grid**2 + 1"
            )
        layers = tuple(_count_blocks(sd, f"visual.layer{i}.") for i in (1, 2, 3, 4))
        vision = ResNetConfig(
            image_size=grid * 32, layers=layers, width=width, heads=max(width * 32 // 64, 1)
        )
    else:
        raise CheckpointError(
            "not a CLIP state dict in OpenAI's layout: found neither 'visual.proj' (ViT) nor "
            "'visual.attnpool.positional_embedding' (ModifiedResNet)"
        )
    text_width = _require(sd, "ln_final.weight").shape[0]
    text_fc = _require(sd, "transformer.resblocks.0.mlp.c_fc.weight")
    text = TextConfig(
        context_length=_require(sd, "positional_embedding").shape[0],
        vocab_size=_require(sd, "token_embedding.weight").shape[0],
        width=text_width,
        heads=max(text_width // 64, 1),
        layers=_count_blocks(sd, "transformer.resblocks."),
        mlp_ratio=text_fc.shape[0] / text_width,
    )
    bias = float(sd["logit_bias"]) if "logit_bias" in sd else None  # SigLIP-trained models
    config = CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, logit_bias_init=bias)
    return config.replace(**overrides) if overrides else config


#: CLIP's architecture among cliplab's switches: what OpenAI's layout and transformers'
#: CLIPModel hold (their LayerNorm eps included)
_CLIP_VISION_SWITCHES = {
    "class_token": True,
    "patch_bias": False,
    "ln_pre": True,
    "pool": "tok",
    "final_ln_after_pool": False,
    "projection": "matrix",
    "layer_norm_eps": 1e-5,
    "pos_interpolation": "bicubic",
}
_CLIP_TEXT_SWITCHES = {
    "causal": True,
    "pool": "argmax",
    "projection": "matrix",
    "layer_norm_eps": 1e-5,
    "tokenizer": "openai",
}


def is_clip_architecture(config: CLIPConfig) -> bool:
    """Whether the model is CLIP's architecture (OpenAI's): none of the switches SigLIP and
    OpenCLIP's variants set (a ResNet image tower qualifies)."""
    v, t = config.vision, config.text
    if not isinstance(t, TextConfig):
        return False
    text = all(getattr(t, k) == value for k, value in _CLIP_TEXT_SWITCHES.items())
    vision = isinstance(v, ResNetConfig) or all(
        getattr(v, k) == value for k, value in _CLIP_VISION_SWITCHES.items()
    )
    return text and vision


def openai_compatibility_warnings(config: CLIPConfig) -> list[str]:
    """What OpenAI's ``build_model`` would get wrong when reading this model's weights (a
    CheckpointError for an architecture it cannot hold at all: SigLIP's, OpenCLIP's variants)."""
    if not is_clip_architecture(config):
        raise CheckpointError(
            "OpenAI's layout holds CLIP's architecture only (class token, ln_pre, causal text "
            "read at EOT, OpenAI's tokenizer); convert this model to 'cliplab' instead"
        )
    notes = []
    if (
        config.text.activation != "quick_gelu"
        or getattr(config.vision, "activation", "quick_gelu") != "quick_gelu"
    ):
        notes.append(
            "activation is not QuickGELU: OpenAI's loader assumes QuickGELU; load with activation='gelu'"
        )
    if config.text.heads != config.text.width // 64:
        notes.append(
            f"text heads {config.text.heads} != width/64: OpenAI's loader assumes 64-wide heads"
        )
    vision_expected = (
        config.vision.width // 64
        if isinstance(config.vision, ViTConfig)
        else config.vision.width * 32 // 64
    )
    if config.vision.heads != vision_expected:
        notes.append(f"vision heads {config.vision.heads} != OpenAI's rule ({vision_expected})")
    if config.text.mlp_ratio != 4.0 or getattr(config.vision, "mlp_ratio", 4.0) != 4.0:
        notes.append("MLP ratio is not 4: OpenAI's model code assumes 4")
    return notes
