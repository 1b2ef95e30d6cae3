"""The named presets: the paper's models exactly (dimensions from OpenAI's ``build_model``),
OpenCLIP's larger ViTs, SigLIP and SigLIP 2 as OpenCLIP and transformers build them, and tiny
and small models for tests and CPU training; ``get_config(name, **settings)`` is a preset with
settings changed (:meth:`cliplab.config.CLIPConfig.replace`)."""

from __future__ import annotations

import math
from typing import Any

from cliplab.config import (
    SIGLIP_TEXT,
    SIGLIP_VISION,
    CLIPConfig,
    ResNetConfig,
    TextConfig,
    ViTConfig,
)

__all__ = ["PRESETS", "PRESET_PREPROCESS", "canonical_name", "get_config", "list_models"]


# ---------------------------------------------------------------------------------------
# Presets. OpenAI's models use 64-wide attention heads in both towers (heads = width // 64)
# and the text tower's width grows with the image tower (its depth stays at 12).
# ---------------------------------------------------------------------------------------


def _openai_text(width: int) -> TextConfig:
    return TextConfig(width=width, heads=width // 64, layers=12)


def _openai_vit(
    embed_dim: int, image: int, patch: int, width: int, layers: int, text: int
) -> CLIPConfig:
    vision = ViTConfig(
        image_size=image, patch_size=patch, width=width, layers=layers, heads=width // 64
    )
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=_openai_text(text))


def _openai_rn(
    embed_dim: int, image: int, layers: tuple[int, int, int, int], width: int, text: int
) -> CLIPConfig:
    vision = ResNetConfig(image_size=image, layers=layers, width=width, heads=width * 32 // 64)
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=_openai_text(text))


def _openclip_vit(
    embed_dim: int,
    image: int,
    width: int,
    layers: int,
    head_width: int,
    text: tuple[int, int, int],
    mlp_ratio: float = 4.0,
) -> CLIPConfig:
    """OpenCLIP's larger ViTs (model_configs/*.json): patch 14, exact GELU, ``head_width``-wide
    image heads, ``text`` = (width, heads, layers)."""
    vision = ViTConfig(
        image_size=image,
        patch_size=14,
        width=width,
        layers=layers,
        heads=width // head_width,
        mlp_ratio=mlp_ratio,
        activation="gelu",
    )
    t_width, t_heads, t_layers = text
    text_cfg = TextConfig(width=t_width, heads=t_heads, layers=t_layers, activation="gelu")
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text_cfg)


def _siglip(
    image: int,
    patch: int,
    width: int,
    layers: int,
    heads: int,
    mlp_ratio: float = 4.0,
    *,
    vocab: int = 32000,
    context: int = 64,
    text: tuple[int, int, int, float] | None = None,
) -> CLIPConfig:
    """SigLIP / SigLIP 2 (Zhai et al. 2023, Tschannen et al. 2025) as Google published them
    (big_vision; transformers' SiglipModel): GELU-tanh, LayerNorm eps 1e-6, a MAP head and
    no class token; the text tower bidirectional, read at the last position, with a biased
    projection into the image width. ``text``: (width, layers, heads, mlp_ratio) when the
    text tower differs from the image tower (giant-opt)."""
    t_width, t_layers, t_heads, t_mlp = text or (width, layers, heads, mlp_ratio)
    act = {"activation": "gelu_tanh"}
    shape = {"width": width, "layers": layers, "heads": heads, "mlp_ratio": mlp_ratio, **act}
    vision = ViTConfig(image_size=image, patch_size=patch, **shape, **SIGLIP_VISION)
    t_shape = {"width": t_width, "layers": t_layers, "heads": t_heads, "mlp_ratio": t_mlp, **act}
    text_cfg = TextConfig(
        context_length=context,
        vocab_size=vocab,
        **t_shape,
        **SIGLIP_TEXT,
        tokenizer="files:unknown",  # SentencePiece / Gemma: the checkpoint's files
    )
    return CLIPConfig(
        embed_dim=width,
        vision=vision,
        text=text_cfg,
        logit_scale_init=math.log(10),
        logit_bias_init=-10.0,
    )


_SO400M = (1152, 27, 16, 3.7362)  # width, layers, heads, MLP ratio (4304 wide)
_SIGLIP2 = {"vocab": 256000}  # Gemma's tokenizer

_TINY_TEXT = TextConfig(width=64, heads=2, layers=2)

PRESETS: dict[str, CLIPConfig] = {
    # OpenAI's released models (Radford et al. 2021, Table 19/20; OpenAI's build_model).
    "RN50": _openai_rn(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _openai_rn(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _openai_rn(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _openai_rn(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _openai_rn(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B-32": _openai_vit(512, 224, 32, 768, 12, 512),
    "ViT-B-16": _openai_vit(512, 224, 16, 768, 12, 512),
    "ViT-L-14": _openai_vit(768, 224, 14, 1024, 24, 768),
    "ViT-L-14-336": _openai_vit(768, 336, 14, 1024, 24, 768),
    # OpenCLIP's larger ViTs (LAION, DataComp), as its model_configs define them
    "ViT-H-14": _openclip_vit(1024, 224, 1280, 32, 80, (1024, 16, 24)),
    "ViT-H-14-378": _openclip_vit(1024, 378, 1280, 32, 80, (1024, 16, 24)),
    "ViT-g-14": _openclip_vit(1024, 224, 1408, 40, 88, (1024, 16, 24), mlp_ratio=4.3637),
    "ViT-bigG-14": _openclip_vit(1280, 224, 1664, 48, 104, (1280, 20, 32), mlp_ratio=4.9231),
    # SigLIP (google/siglip-*): the OpenCLIP names. SO400M/14 "384" was trained on 384 px
    # images of which its 27 x 27 patches of 14 px see 378 (its preprocessing: resize to
    # 384, keep the top-left 378, as the convolution does).
    "ViT-B-16-SigLIP": _siglip(224, 16, 768, 12, 12),
    "ViT-B-16-SigLIP-256": _siglip(256, 16, 768, 12, 12),
    "ViT-B-16-SigLIP-384": _siglip(384, 16, 768, 12, 12),
    "ViT-B-16-SigLIP-512": _siglip(512, 16, 768, 12, 12),
    "ViT-B-16-SigLIP-i18n-256": _siglip(256, 16, 768, 12, 12, vocab=250000),
    "ViT-L-16-SigLIP-256": _siglip(256, 16, 1024, 24, 16),
    "ViT-L-16-SigLIP-384": _siglip(384, 16, 1024, 24, 16),
    "ViT-SO400M-14-SigLIP": _siglip(224, 14, *_SO400M, context=16),
    "ViT-SO400M-14-SigLIP-384": _siglip(378, 14, *_SO400M),
    # SigLIP 2 (google/siglip2-*, fixed resolution): the same towers, Gemma's vocabulary
    "ViT-B-32-SigLIP2-256": _siglip(256, 32, 768, 12, 12, **_SIGLIP2),
    "ViT-B-16-SigLIP2": _siglip(224, 16, 768, 12, 12, **_SIGLIP2),
    "ViT-B-16-SigLIP2-256": _siglip(256, 16, 768, 12, 12, **_SIGLIP2),
    "ViT-B-16-SigLIP2-384": _siglip(384, 16, 768, 12, 12, **_SIGLIP2),
    "ViT-B-16-SigLIP2-512": _siglip(512, 16, 768, 12, 12, **_SIGLIP2),
    "ViT-L-16-SigLIP2-256": _siglip(256, 16, 1024, 24, 16, **_SIGLIP2),
    "ViT-L-16-SigLIP2-384": _siglip(384, 16, 1024, 24, 16, **_SIGLIP2),
    "ViT-L-16-SigLIP2-512": _siglip(512, 16, 1024, 24, 16, **_SIGLIP2),
    "ViT-SO400M-14-SigLIP2": _siglip(224, 14, *_SO400M, **_SIGLIP2),
    "ViT-SO400M-14-SigLIP2-378": _siglip(378, 14, *_SO400M, **_SIGLIP2),
    "ViT-SO400M-16-SigLIP2-256": _siglip(256, 16, *_SO400M, **_SIGLIP2),
    "ViT-SO400M-16-SigLIP2-384": _siglip(384, 16, *_SO400M, **_SIGLIP2),
    "ViT-SO400M-16-SigLIP2-512": _siglip(512, 16, *_SO400M, **_SIGLIP2),
    "ViT-gopt-16-SigLIP2-256": _siglip(256, 16, 1536, 40, 16, text=_SO400M, **_SIGLIP2),
    "ViT-gopt-16-SigLIP2-384": _siglip(384, 16, 1536, 40, 16, text=_SO400M, **_SIGLIP2),
    # Tiny models for tests: seconds on a CPU.
    "tiny-vit": CLIPConfig(
        embed_dim=32,
        vision=ViTConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2),
        text=_TINY_TEXT,
    ),
    "tiny-rn": CLIPConfig(
        embed_dim=32,
        vision=ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=8),
        text=_TINY_TEXT,
    ),
    "tiny-siglip": _siglip(32, 8, 64, 2, 2, vocab=1000, context=16),
    # Small models for CPU training (minutes on 2 cores).
    "small-vit": CLIPConfig(
        embed_dim=256,
        vision=ViTConfig(image_size=64, patch_size=8, width=256, layers=6, heads=4),
        text=TextConfig(width=256, heads=4, layers=4),
    ),
    "small-rn": CLIPConfig(
        embed_dim=256,
        vision=ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=32, heads=8),
        text=TextConfig(width=256, heads=4, layers=4),
    ),
}

#: The eval preprocessing of presets that differ from OpenAI's (``EvalTransform``'s settings).
PRESET_PREPROCESS: dict[str, dict[str, Any]] = {
    name: {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "resize_mode": "squash",
        **({"resize_size": 384} if name == "ViT-SO400M-14-SigLIP-384" else {}),
    }
    for name in PRESETS
    if "SigLIP" in name or name == "tiny-siglip"
}

_ALIASES = {
    "vit-b/32": "ViT-B-32",
    "vit-b/16": "ViT-B-16",
    "vit-l/14": "ViT-L-14",
    "vit-l/14@336px": "ViT-L-14-336",
    "vit-l/14-336": "ViT-L-14-336",
    "vit-l-14@336px": "ViT-L-14-336",
    "vit-l-14-336px": "ViT-L-14-336",
}


def canonical_name(name: str) -> str:
    """Map ``ViT-B/32``, ``vit-b-32``, ``ViT-L/14@336px``... to the preset key."""
    key = name.strip()
    lowered = key.lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    for preset in PRESETS:
        if preset.lower() == lowered or preset.lower() == lowered.replace("/", "-"):
            return preset
    raise ValueError(f"unknown model {name!r}; available: {', '.join(PRESETS)}")


def list_models() -> list[str]:
    """Names of the presets, OpenAI's models first."""
    return list(PRESETS)


def get_config(name: str, **overrides: Any) -> CLIPConfig:
    """The preset's config, with overrides applied (see ``CLIPConfig.replace``)."""
    config = PRESETS[canonical_name(name)]
    return config.replace(**overrides) if overrides else config
