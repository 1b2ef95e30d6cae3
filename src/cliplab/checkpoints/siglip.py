"""Hugging Face ``transformers`` SiglipModel and Siglip2Model: config and weights, both ways.

Both are cliplab's ViT and text towers with SigLIP's switches (``presets._siglip``). Their
blocks have CLIPModel's layout (:mod:`cliplab.checkpoints.hf` converts them); the rest is
renamed here. The image feature is the MAP head's output (no projection); the text feature
is the last position's, through ``text_model.head`` (a linear layer with a bias).

SigLIP 2's NaFlex models (``Siglip2Model``) embed patches with a linear layer over each
flattened patch (rows, columns, channels: the convolution's weight in another order) and
resample their positional embeddings (a square grid) bilinearly to each image's patch grid,
keeping its aspect ratio. cliplab runs them on square images at the stored grid's size, or
at another size by ``image_size`` (the same bilinear resampling): equal to transformers' for
square inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cliplab.checkpoints import hf
from cliplab.checkpoints.errors import CheckpointError
from cliplab.config import SIGLIP_TEXT, SIGLIP_VISION, CLIPConfig, TextConfig, ViTConfig

MODEL_TYPES = ("siglip", "siglip2")

# transformers' defaults (SiglipTextConfig / SiglipVisionConfig), for config.json files that
# omit fields
_TEXT_DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 64,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "num_patches": 256,  # SigLIP 2 (NaFlex)
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": True,
}

_HEAD = "vision_model.head."
_FLAT_MAP = {
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "text_model.head.weight": "text.text_projection.weight",
    "text_model.head.bias": "text.text_projection.bias",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.patch_embedding.bias": "visual.conv1.bias",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    _HEAD + "probe": "visual.attn_pool.probe",
    _HEAD + "attention.in_proj_weight": "visual.attn_pool.attn.in_proj_weight",
    _HEAD + "attention.in_proj_bias": "visual.attn_pool.attn.in_proj_bias",
    _HEAD + "attention.out_proj.weight": "visual.attn_pool.attn.out_proj.weight",
    _HEAD + "attention.out_proj.bias": "visual.attn_pool.attn.out_proj.bias",
    _HEAD + "layernorm.weight": "visual.attn_pool.ln.weight",
    _HEAD + "layernorm.bias": "visual.attn_pool.ln.bias",
    _HEAD + "mlp.fc1.weight": "visual.attn_pool.mlp.c_fc.weight",
    _HEAD + "mlp.fc1.bias": "visual.attn_pool.mlp.c_fc.bias",
    _HEAD + "mlp.fc2.weight": "visual.attn_pool.mlp.c_proj.weight",
    _HEAD + "mlp.fc2.bias": "visual.attn_pool.mlp.c_proj.bias",
    "logit_scale": "logit_scale",
    "logit_bias": "logit_bias",
}
_SCALARS = ("logit_scale", "logit_bias")  # (1,) in transformers, () in cliplab


def is_siglip_config(data: Mapping[str, Any]) -> bool:
    """A transformers config.json of SiglipModel or Siglip2Model."""
    return data.get("model_type") in MODEL_TYPES


def config_from_hf(data: Mapping[str, Any], **overrides: Any) -> CLIPConfig:
    """A ``CLIPConfig`` from a SiglipModel / Siglip2Model ``config.json`` dict."""
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"config.json has model_type {model_type!r}, not one of {MODEL_TYPES}"
        )
    tc = {**_TEXT_DEFAULTS, **(data.get("text_config") or {})}
    vc = {**_VISION_DEFAULTS, **(data.get("vision_config") or {})}
    if not vc["vision_use_head"]:
        raise CheckpointError("vision_config.vision_use_head is false: no image feature to load")
    if int(vc["num_channels"]) != 3:
        raise CheckpointError(
            f"vision_config.num_channels {vc['num_channels']} is not supported (3)"
        )
    patch = int(vc["patch_size"])
    if model_type == "siglip2":  # NaFlex: a square grid of num_patches positions
        grid = math.isqrt(int(vc["num_patches"]))
        if grid * grid != int(vc["num_patches"]):
            raise CheckpointError(f"vision_config.num_patches {vc['num_patches']} is not a square")
        image_size = grid * patch
    else:  # the convolution sees the first (size // patch) * patch pixels (SO400M/14 at 384)
        image_size = int(vc["image_size"]) // patch * patch
    width = int(vc["hidden_size"])
    projection = int(tc.get("projection_size") or tc["hidden_size"])
    if projection != width:
        raise CheckpointError(
            f"text_config.projection_size {projection} differs from the image features' width "
            f"{width} (vision_config.hidden_size)"
        )
    vision = hf.vision_tower(
        vc,
        image_size,
        **{**SIGLIP_VISION, "layer_norm_eps": float(vc["layer_norm_eps"])},
        pos_interpolation="bilinear" if model_type == "siglip2" else "bicubic",
    )
    text = hf.text_tower(tc, **{**SIGLIP_TEXT, "layer_norm_eps": float(tc["layer_norm_eps"])})
    config = CLIPConfig(
        embed_dim=width,
        vision=vision,
        text=text,
        logit_scale_init=math.log(10),
        logit_bias_init=-10.0,
    )
    return config.replace(**overrides) if overrides else config


def is_siglip_architecture(config: CLIPConfig) -> bool:
    """Whether transformers' SiglipModel can hold this model (SigLIP's switches, a bias)."""
    v, t = config.vision, config.text
    eps = "layer_norm_eps"  # any eps: transformers' config says it
    return (
        isinstance(v, ViTConfig)
        and isinstance(t, TextConfig)
        and all(getattr(v, k) == value for k, value in SIGLIP_VISION.items() if k != eps)
        and all(getattr(t, k) == value for k, value in SIGLIP_TEXT.items() if k != eps)
        and v.pos_interpolation == "bicubic"
        and config.logit_bias_init is not None
        and v.activation in hf.TO_HF_ACTIVATION
        and t.activation in hf.TO_HF_ACTIVATION
    )


def config_to_hf(config: CLIPConfig) -> dict[str, Any]:
    """The ``config.json`` dict of a transformers SiglipModel equivalent to ``config``."""
    if not is_siglip_architecture(config):
        raise CheckpointError(
            "transformers' SiglipModel holds SigLIP's architecture only (no class token, MAP "
            "head, bidirectional text tower read at the last position, a logit bias)"
        )
    v, t = config.vision, config.text
    assert isinstance(v, ViTConfig) and isinstance(t, TextConfig)
    return {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "siglip_text_model",
            **hf.text_tower_dict(t),
            "projection_size": config.embed_dim,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            **hf.vision_tower_dict(v),
            "vision_use_head": True,
        },
    }


def from_hf(state_dict: Mapping[str, torch.Tensor], patch_size: int) -> dict[str, torch.Tensor]:
    """SiglipModel / Siglip2Model weights -> cliplab keys."""
    sd = dict(state_dict)
    key = "vision_model.embeddings.patch_embedding.weight"
    if key in sd and sd[key].dim() == 2:  # SigLIP 2: (W, p*p*3), patch rows, columns, channels
        w = sd[key]
        sd[key] = w.reshape(w.shape[0], patch_size, patch_size, -1).permute(0, 3, 1, 2)
    out = hf.from_hf(sd, _FLAT_MAP, {}, "a transformers SiglipModel / Siglip2Model")
    for name in _SCALARS:
        if name in out:
            out[name] = out[name].reshape(())
    return out


def to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cliplab weights (SigLIP's architecture) -> transformers SiglipModel keys."""
    sd = {k: (v.reshape(1) if k in _SCALARS else v) for k, v in state_dict.items()}
    return hf.to_hf(sd, _FLAT_MAP, {}, "transformers SiglipModel")


#: transformers' PIL resampling codes
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def preprocess_from_hf(directory: Path, config: CLIPConfig) -> dict[str, Any]:
    """The eval transform's settings (:class:`cliplab.transforms.EvalTransform`) from a
    directory's ``preprocessor_config.json``: SigLIP's processors resize to the square size
    (no crop), with transformers' tensor resampling (its processors' backend since
    transformers 5). Without the file: SigLIP's processor defaults."""
    from cliplab.checkpoints.io import read_json

    siglip2 = config.vision.pos_interpolation == "bilinear"
    pp: dict[str, Any] = {}
    if (directory / "preprocessor_config.json").exists():
        pp = read_json(directory / "preprocessor_config.json")
    resample = int(pp.get("resample", 2 if siglip2 else 3))
    if resample not in _RESAMPLE:
        raise CheckpointError(
            f"{directory}: preprocessor_config.json resample {resample} is not supported "
            f"(2 bilinear, 3 bicubic)"
        )
    size = pp.get("size") or {}
    resize = int(size.get("height", config.vision.image_size)) if not siglip2 else None
    hints: dict[str, Any] = {
        "mean": tuple(pp.get("image_mean", (0.5, 0.5, 0.5))),
        "std": tuple(pp.get("image_std", (0.5, 0.5, 0.5))),
        "resize_mode": "squash",
        "interpolation": _RESAMPLE[resample],
        "resampler": "torch",
        "background": (255, 255, 255),  # transformers composites transparency onto white
    }
    if resize is not None and resize != config.vision.image_size:
        hints["resize_size"] = resize
    return hints


def preprocessor_config(config: CLIPConfig) -> dict[str, Any]:
    """preprocessor_config.json of transformers' SiglipImageProcessor for ``config``: resize
    to the square size, bicubic, mean/std 0.5."""
    n = config.vision.image_size
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": n, "width": n},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }
