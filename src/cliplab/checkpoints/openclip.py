"""OpenCLIP hub directories: the model from ``open_clip_config.json``, weights renamed.

The config names the architecture explicitly (nothing is guessed from weight shapes):
OpenCLIP's ``VisionTransformer`` with its switches (``no_ln_pre``, ``pool_type`` "tok" /
"avg", ``final_ln_after_pool``, ``head_width``, ``act_kwargs``, ``norm_kwargs``), its
``ModifiedResNet``, the timm towers of its SigLIP models (``vit_<size>_patch<p>_siglip_<px>``
with the "map" pool: a table below gives their sizes and activations, as timm defines them),
and its text transformer with SigLIP's switches (``no_causal_mask``, ``pool_type``,
``proj_bias``, ``proj_type``). What cliplab has no equivalent for is refused by name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cliplab.checkpoints import openai
from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.io import read_json
from cliplab.config import (
    SIGLIP_VISION,
    CLIPConfig,
    HFTextConfig,
    ResNetConfig,
    TextConfig,
    ViTConfig,
)

#: OpenCLIP's custom attention blocks (both towers), which cliplab has no equivalent for
_CUSTOM_BLOCKS = {
    "block_type": (None, "default"),
    "ls_init_value": (None,),
    **{
        key: (False, None)
        for key in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner")
        + ("scale_attn", "scale_fc")
    },
}
#: OpenCLIP config keys with no cliplab equivalent, and the values that are harmless.
_UNSUPPORTED = {
    "vision_cfg": {
        "attentional_pool": (False, None),
        "pos_embed_type": ("learnable", None),
        **_CUSTOM_BLOCKS,
    },
    "text_cfg": {
        "embed_cls": (False, None),
        "use_pad_mask": (False, None),
        "final_ln_after_pool": (False, None),
        **_CUSTOM_BLOCKS,
    },
}

#: timm's SigLIP image towers (timm/models/vision_transformer.py): width, depth, heads, MLP
#: ratio by size; ``vit_<size>_patch<p>_siglip_<px>``.
TIMM_SIGLIP_SIZES: dict[str, tuple[int, int, int, float]] = {
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "so400m": (1152, 27, 16, 3.7362),
    "giantopt": (1536, 40, 16, 4.0),
}
#: The timm SigLIP towers built with GELU-tanh (``act_layer='gelu_tanh'``); the others use
#: exact GELU (the weights were trained with GELU-tanh; timm's choice is what OpenCLIP runs).
TIMM_GELU_TANH = frozenset(
    {
        "vit_base_patch32_siglip_256",
        "vit_large_patch16_siglip_512",
        "vit_so400m_patch16_siglip_256",
        "vit_so400m_patch16_siglip_384",
        "vit_so400m_patch16_siglip_512",
        "vit_giantopt_patch16_siglip_256",
        "vit_giantopt_patch16_siglip_384",
    }
)
_TIMM_NAME = re.compile(r"^vit_([a-z0-9]+)_patch(\d+)_siglip_(\d+)$")


def _check_supported(model_cfg: Mapping[str, Any], source: str) -> None:
    for tower, keys in _UNSUPPORTED.items():
        cfg = model_cfg.get(tower) or {}
        for key, harmless in keys.items():
            if key in cfg and cfg[key] not in harmless:
                raise CheckpointError(
                    f"{source}: OpenCLIP {tower}.{key}={cfg[key]!r} is not supported by "
                    f"cliplab's architectures"
                )


def _activation(cfg: Mapping[str, Any], quick_gelu: bool) -> str:
    act = cfg.get("act_kwargs") or {}
    if act.get("approximate") == "tanh":
        return "gelu_tanh"
    return "quick_gelu" if quick_gelu else "gelu"


def _eps(cfg: Mapping[str, Any]) -> float:
    return float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5))


def timm_siglip_tower(name: str, pool: str, proj: str, source: str) -> tuple[ViTConfig, int]:
    """The ``ViTConfig`` of one of timm's SigLIP towers as OpenCLIP builds it (``pool``
    "map", ``proj`` "none"), and the image size its preprocessing resizes to (SO400M/14 at
    384 px sees 378 of them)."""
    m = _TIMM_NAME.match(name)
    if not m or m.group(1) not in TIMM_SIGLIP_SIZES:
        raise CheckpointError(
            f"{source}: timm image tower {name!r} is not supported (timm's SigLIP towers "
            f"vit_<{'|'.join(TIMM_SIGLIP_SIZES)}>_patch<P>_siglip_<SIZE> are)"
        )
    if pool != "map" or proj not in ("none", ""):
        raise CheckpointError(
            f"{source}: timm tower {name!r} with timm_pool={pool!r}, timm_proj={proj!r} is not "
            f"supported (SigLIP's: 'map' and 'none')"
        )
    width, layers, heads, mlp_ratio = TIMM_SIGLIP_SIZES[m.group(1)]
    patch, size = int(m.group(2)), int(m.group(3))
    vision = ViTConfig(
        image_size=size // patch * patch,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=mlp_ratio,
        activation="gelu_tanh" if name in TIMM_GELU_TANH else "gelu",
        **SIGLIP_VISION,
    )
    return vision, size


def _vision(cfg: Mapping[str, Any], quick_gelu: bool, source: str) -> tuple[Any, int | None]:
    if cfg.get("timm_model_name"):
        return timm_siglip_tower(
            cfg["timm_model_name"],
            cfg.get("timm_pool", "avg"),
            cfg.get("timm_proj", "linear"),
            source,
        )
    head_width = int(cfg.get("head_width", 64))
    width = int(cfg.get("width", 768))
    layers = cfg.get("layers", 12)
    image_size = int(cfg.get("image_size", 224))
    if isinstance(layers, (list, tuple)):
        resnet = ResNetConfig(
            image_size=image_size, layers=tuple(layers), width=width, heads=width * 32 // head_width
        )
        return resnet, None
    pool = cfg.get("pool_type", "tok")
    if pool not in ("tok", "avg"):
        raise CheckpointError(f"{source}: OpenCLIP vision_cfg.pool_type={pool!r} is not supported")
    vision = ViTConfig(
        image_size=image_size,
        patch_size=int(cfg.get("patch_size", 16)),
        width=width,
        layers=int(layers),
        heads=width // head_width,
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
        activation=_activation(cfg, quick_gelu),
        ln_pre=not cfg.get("no_ln_pre", False),
        pool=pool,
        final_ln_after_pool=bool(cfg.get("final_ln_after_pool", False)),
        layer_norm_eps=_eps(cfg),
    )
    return vision, None


def _text(cfg: Mapping[str, Any], quick_gelu: bool, source: str) -> TextConfig:
    pool = cfg.get("pool_type", "argmax")
    if pool not in ("argmax", "last", "first"):
        raise CheckpointError(f"{source}: OpenCLIP text_cfg.pool_type={pool!r} is not supported")
    causal = not cfg.get("no_causal_mask", False)
    if cfg.get("proj_type", "linear") == "none":
        projection = "none"
    else:
        projection = "linear" if cfg.get("proj_bias", False) else "matrix"
    return TextConfig(
        context_length=int(cfg.get("context_length", 77)),
        vocab_size=int(cfg.get("vocab_size", 49408)),
        width=int(cfg.get("width", 512)),
        heads=int(cfg.get("heads", 8)),
        layers=int(cfg.get("layers", 12)),
        mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
        activation=_activation(cfg, quick_gelu),
        length_groups=4 if causal and pool == "argmax" else 0,
        causal=causal,
        pool=pool,
        projection=projection,
        layer_norm_eps=_eps(cfg),
    )


def text_directory(model_cfg: Mapping[str, Any], directory: Path) -> Path | None:
    """Where the transformers config of an OpenCLIP Hugging Face text tower is (its
    ``config.json``, and its tokenizer files): the hub directory itself, its sub-directory
    named as ``hf_model_name``'s last part, or ``hf_model_name`` when that is a local
    directory (as OpenCLIP's ``AutoConfig.from_pretrained`` reads it). None if not found."""
    name = str((model_cfg.get("text_cfg") or {}).get("hf_model_name") or "")
    for candidate in (directory, directory / Path(name).name, Path(name).expanduser()):
        if name and (candidate / "config.json").is_file():
            return candidate
    return None


def _hf_text(cfg: Mapping[str, Any], directory: Path | None, source: str) -> HFTextConfig:
    """OpenCLIP's ``HFTextEncoder``: transformers' config from the checkpoint's files."""
    found = text_directory({"text_cfg": cfg}, directory) if directory is not None else None
    if found is None:
        raise CheckpointError(
            f"{source}: the text tower is transformers' {cfg['hf_model_name']!r}, whose "
            f"config.json is not here (cliplab never downloads it): put it, with the "
            f"tokenizer files, in the checkpoint directory or a sub-directory "
            f"{Path(str(cfg['hf_model_name'])).name!r} of it"
        )
    settings = read_json(found / "config.json")
    proj = cfg.get("hf_proj_type", "mlp")
    return HFTextConfig(
        hf_config=json.dumps(settings, sort_keys=True),
        pooler=cfg.get("hf_pooler_type", "mean_pooler"),
        proj="none" if proj is None else proj,
        context_length=int(cfg.get("context_length", 77)),
    )


def config_from_openclip(
    model_cfg: Mapping[str, Any],
    source: str,
    directory: Path | None = None,
    **overrides: Any,
) -> tuple[CLIPConfig, int | None]:
    """The ``CLIPConfig`` of an OpenCLIP ``model_cfg`` (open_clip_config.json, or one of
    OpenCLIP's model_configs/*.json), and the size its preprocessing resizes images to when
    that differs from the pixels the model sees (None otherwise). A Hugging Face text tower
    (``hf_model_name``) is built from the transformers config found in ``directory``."""
    _check_supported(model_cfg, source)
    text_cfg = model_cfg.get("text_cfg") or {}
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    try:
        vision, resize = _vision(model_cfg.get("vision_cfg") or {}, quick_gelu, source)
        if text_cfg.get("hf_model_name"):
            text: TextConfig | HFTextConfig = _hf_text(text_cfg, directory, source)
        else:
            text = _text(text_cfg, quick_gelu, source)
        bias = model_cfg.get("init_logit_bias")
        config = CLIPConfig(
            embed_dim=int(model_cfg["embed_dim"]),
            vision=vision,
            text=text,
            logit_scale_init=float(model_cfg.get("init_logit_scale", math.log(1 / 0.07))),
            logit_bias_init=None if bias is None else float(bias),
        )
        config = config.replace(**overrides) if overrides else config
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{source}: cannot build the model its config describes ({e})") from e
    image_size = getattr(config.vision, "image_size", None)
    return config, (resize if resize is not None and resize != image_size else None)


def preprocess_from_openclip(cfg: Mapping[str, Any], resize: int | None) -> dict[str, Any]:
    """The eval transform's settings of an open_clip_config.json's ``preprocess_cfg``
    (OpenCLIP's transform: torchvision on PIL images, so PIL's resampling)."""
    pp = cfg.get("preprocess_cfg") or {}
    hints: dict[str, Any] = {k: tuple(pp[k]) for k in ("mean", "std") if k in pp}
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise CheckpointError(f"OpenCLIP preprocess_cfg.resize_mode={mode!r} is not supported")
    interpolation = pp.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise CheckpointError(
            f"OpenCLIP preprocess_cfg.interpolation={interpolation!r} is not supported"
        )
    if mode != "shortest" or interpolation != "bicubic":
        hints.update(resize_mode=mode, interpolation=interpolation)
    if resize is not None:
        hints["resize_size"] = resize
    return hints


# -- weights -------------------------------------------------------------------------------

_TIMM = "visual.trunk."
_TIMM_FLAT = {
    "patch_embed.proj.weight": "visual.conv1.weight",
    "patch_embed.proj.bias": "visual.conv1.bias",
    "norm.weight": "visual.ln_post.weight",
    "norm.bias": "visual.ln_post.bias",
    "attn_pool.latent": "visual.attn_pool.probe",
    "attn_pool.proj.weight": "visual.attn_pool.attn.out_proj.weight",
    "attn_pool.proj.bias": "visual.attn_pool.attn.out_proj.bias",
    "attn_pool.norm.weight": "visual.attn_pool.ln.weight",
    "attn_pool.norm.bias": "visual.attn_pool.ln.bias",
    "attn_pool.mlp.fc1.weight": "visual.attn_pool.mlp.c_fc.weight",
    "attn_pool.mlp.fc1.bias": "visual.attn_pool.mlp.c_fc.bias",
    "attn_pool.mlp.fc2.weight": "visual.attn_pool.mlp.c_proj.weight",
    "attn_pool.mlp.fc2.bias": "visual.attn_pool.mlp.c_proj.bias",
}
_TIMM_BLOCK = {
    "norm1": "ln_1",
    "norm2": "ln_2",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_TIMM_BLOCK_KEY = re.compile(
    r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv\.weight|attn\.qkv\.bias|attn\.proj|mlp\.fc1|mlp\.fc2)(.*)$"
)


def _from_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm SigLIP tower's weights (``visual.trunk.*``) -> cliplab's ``visual.*``."""
    out: dict[str, torch.Tensor] = {}
    pool: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        name = key[len(_TIMM) :]
        if name in _TIMM_FLAT:
            out[_TIMM_FLAT[name]] = value
        elif name == "pos_embed":
            out["visual.positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])
        elif name.startswith("attn_pool.") and name.split(".")[1] in ("q", "kv"):
            pool[name[len("attn_pool.") :]] = value
        elif m := _TIMM_BLOCK_KEY.match(name):
            index, part, rest = m.groups()
            out[f"visual.transformer.resblocks.{index}.{_TIMM_BLOCK[part]}{rest}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unexpected keys in a timm SigLIP tower: {unknown[:8]}")
    for kind in ("weight", "bias"):  # the probe's query and the tokens' keys/values: one in_proj
        if f"q.{kind}" in pool and f"kv.{kind}" in pool:
            name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
            out[f"visual.attn_pool.attn.{name}"] = torch.cat(
                [pool[f"q.{kind}"], pool[f"kv.{kind}"]]
            )
    return out


def from_openclip(sd: Mapping[str, torch.Tensor], custom_text: bool) -> dict[str, torch.Tensor]:
    """An OpenCLIP state dict -> cliplab keys: the text tower at the root (``CLIP``) or
    under ``text.`` (``CustomTextCLIP``: ``custom_text``), a timm tower under
    ``visual.trunk.``."""
    sd = openai.strip_wrapper_prefixes(sd)
    timm = {k: v for k, v in sd.items() if k.startswith(_TIMM)}
    rest = {k: v for k, v in sd.items() if not k.startswith(_TIMM)}
    out = dict(rest) if custom_text else openai.from_openai(rest)
    out.update(_from_timm(timm))
    return out


# -- writing -------------------------------------------------------------------------------


def _kwargs(tower: ViTConfig | TextConfig) -> dict[str, Any]:
    """OpenCLIP's ``norm_kwargs`` / ``act_kwargs`` of a tower (the inverse of ``_eps`` and
    ``_activation``)."""
    kwargs: dict[str, Any] = {}
    if tower.layer_norm_eps != 1e-5:
        kwargs["norm_kwargs"] = {"eps": tower.layer_norm_eps}
    if tower.activation == "gelu_tanh":
        kwargs["act_kwargs"] = {"approximate": "tanh"}
    return kwargs


def config_to_openclip(config: CLIPConfig) -> dict[str, Any]:
    """The ``model_cfg`` of an OpenCLIP model equivalent to ``config`` (the inverse of
    :func:`config_from_openclip` for OpenCLIP's own towers; SigLIP-style towers are written as
    OpenCLIP's ``VisionTransformer`` options where they exist, else refused)."""
    v, t = config.vision, config.text
    if not isinstance(t, TextConfig):
        raise CheckpointError("writing OpenCLIP's Hugging Face text towers is not supported")
    activations = {getattr(v, "activation", t.activation), t.activation}
    if len(activations) != 1 and activations != {"gelu", "gelu_tanh"}:
        raise CheckpointError(f"OpenCLIP has one activation for both towers, not {activations}")
    if isinstance(v, ResNetConfig):
        vision: dict[str, Any] = {
            "image_size": v.image_size,
            "layers": list(v.layers),
            "width": v.width,
            "head_width": v.width * 32 // v.heads,
        }
    else:
        if not v.class_token or v.pool == "map" or v.patch_bias or v.projection != "matrix":
            raise CheckpointError(
                "OpenCLIP's VisionTransformer has a class token, no MAP head, no patch bias and "
                "a projection: this image tower has no OpenCLIP config (SigLIP's are timm towers)"
            )
        vision = {
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.width // v.heads,
            "mlp_ratio": v.mlp_ratio,
            "patch_size": v.patch_size,
            "no_ln_pre": not v.ln_pre,
            "pool_type": v.pool,
            "final_ln_after_pool": v.final_ln_after_pool,
            **_kwargs(v),
        }
    text: dict[str, Any] = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
        "no_causal_mask": not t.causal,
        "pool_type": t.pool,
        "proj_bias": t.projection == "linear",
        "proj_type": "none" if t.projection == "none" else "linear",
        **_kwargs(t),
    }
    model_cfg: dict[str, Any] = {
        "embed_dim": config.embed_dim,
        "quick_gelu": t.activation == "quick_gelu",
        "vision_cfg": vision,
        "text_cfg": text,
    }
    if t.projection == "linear" or not t.causal:
        model_cfg["custom_text"] = True
    if config.logit_bias_init is not None:
        model_cfg["init_logit_bias"] = config.logit_bias_init
    return model_cfg


def export_openclip(
    model: torch.nn.Module, path: Any, preprocess: Mapping[str, Any] | None = None
) -> Any:
    """An OpenCLIP hub directory: ``open_clip_config.json`` and
    ``open_clip_model.safetensors``, as OpenCLIP's ``push_to_hf_hub`` writes them (readable
    by ``open_clip.create_model_and_transforms("hf-hub:...")`` and by :func:`cliplab.load`)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from cliplab.fileio import atomic_write, write_json
    from cliplab.transforms import OPENAI_MEAN, OPENAI_STD

    path = Path(path)
    model_cfg = config_to_openclip(model.config)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not model_cfg.get("custom_text"):
        sd = openai.to_openai(sd)
    pp = dict(preprocess or {})
    preprocess_cfg: dict[str, Any] = {
        "mean": list(pp.get("mean", OPENAI_MEAN)),
        "std": list(pp.get("std", OPENAI_STD)),
    }
    for key in ("interpolation", "resize_mode"):
        if key in pp:
            preprocess_cfg[key] = pp[key]
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path / "open_clip_model.safetensors",
        lambda tmp: save_file(sd, str(tmp), metadata={"format": "pt"}),
    )
    write_json(
        path / "open_clip_config.json",
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
    )
    return path
