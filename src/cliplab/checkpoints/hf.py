"""Hugging Face ``transformers`` CLIPModel: config and weight conversion, both directions.

HF's CLIP supports only ViT image towers. Its attention has separate q/k/v projections
(cliplab and OpenAI fuse them into ``in_proj_weight``) and its projections are ``nn.Linear``
weights (the transpose of OpenAI's ``proj`` / ``text_projection`` matrices).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.openai import is_clip_architecture
from cliplab.config import CLIPConfig, TextConfig, ViTConfig

# HF's defaults (CLIPTextConfig / CLIPVisionConfig), for config.json files that omit fields.
_HF_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_HF_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
#: transformers' ``hidden_act`` names -> cliplab's activations, and back
HF_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
}
TO_HF_ACTIVATION = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# Per-block renames: HF name -> cliplab name (q/k/v handled separately).
_BLOCK_MAP = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_FLAT_MAP = {
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {
    "text_projection.weight": "text.text_projection",
    "visual_projection.weight": "visual.proj",
}
_TOWERS = {
    "text_model.encoder.layers.": "text.transformer.resblocks.",
    "vision_model.encoder.layers.": "visual.transformer.resblocks.",
}
_IGNORED = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")
_BLOCK = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")


def is_hf_layout(state_dict: Mapping[str, Any]) -> bool:
    return "text_model.embeddings.token_embedding.weight" in state_dict


def activation(tower: str, value: str) -> str:
    """cliplab's activation for a transformers ``hidden_act``, or a CheckpointError."""
    if value not in HF_ACTIVATIONS:
        raise CheckpointError(
            f"{tower}.hidden_act {value!r} is not supported ({', '.join(HF_ACTIVATIONS)})"
        )
    return HF_ACTIVATIONS[value]


def text_tower(tc: Mapping[str, Any], **switches: Any) -> TextConfig:
    """The ``TextConfig`` of a transformers text config dict (CLIP's or SigLIP's layout;
    ``switches``: the TextConfig fields it does not say, e.g. SigLIP's)."""
    return TextConfig(
        context_length=int(tc["max_position_embeddings"]),
        vocab_size=int(tc["vocab_size"]),
        width=int(tc["hidden_size"]),
        heads=int(tc["num_attention_heads"]),
        layers=int(tc["num_hidden_layers"]),
        mlp_ratio=int(tc["intermediate_size"]) / int(tc["hidden_size"]),
        activation=activation("text_config", tc["hidden_act"]),
        **switches,
    )


def vision_tower(vc: Mapping[str, Any], image_size: int, **switches: Any) -> ViTConfig:
    """The ``ViTConfig`` of a transformers vision config dict (``switches``: as
    :func:`text_tower`'s)."""
    return ViTConfig(
        image_size=image_size,
        patch_size=int(vc["patch_size"]),
        width=int(vc["hidden_size"]),
        layers=int(vc["num_hidden_layers"]),
        heads=int(vc["num_attention_heads"]),
        mlp_ratio=int(vc["intermediate_size"]) / int(vc["hidden_size"]),
        activation=activation("vision_config", vc["hidden_act"]),
        **switches,
    )


def _tower_sizes(c: TextConfig | ViTConfig) -> dict[str, Any]:
    """What a transformers text or vision config says of a transformer's shape."""
    return {
        "hidden_size": c.width,
        "intermediate_size": c.mlp_width,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "hidden_act": TO_HF_ACTIVATION[c.activation],
        "layer_norm_eps": c.layer_norm_eps,
    }


def text_tower_dict(t: TextConfig) -> dict[str, Any]:
    """The inverse of :func:`text_tower`: a transformers text config's sizes."""
    sizes = {"vocab_size": t.vocab_size, "max_position_embeddings": t.context_length}
    return {**sizes, **_tower_sizes(t)}


def vision_tower_dict(v: ViTConfig) -> dict[str, Any]:
    """The inverse of :func:`vision_tower`: a transformers vision config's sizes."""
    sizes = {"image_size": v.image_size, "patch_size": v.patch_size, "num_channels": 3}
    return {**_tower_sizes(v), **sizes}


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> CLIPConfig:
    """A ``CLIPConfig`` from the dict in a HF CLIPModel's ``config.json``."""
    model_type = hf.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointError(
            f"config.json has model_type {model_type!r}; only 'clip' (CLIPModel) is supported"
        )
    tc = {**_HF_TEXT_DEFAULTS, **(hf.get("text_config") or hf.get("text_config_dict") or {})}
    vc = {**_HF_VISION_DEFAULTS, **(hf.get("vision_config") or hf.get("vision_config_dict") or {})}
    for name, c in (("text_config", tc), ("vision_config", vc)):
        if abs(float(c["layer_norm_eps"]) - 1e-5) > 1e-12:
            raise CheckpointError(
                f"{name}.layer_norm_eps {c['layer_norm_eps']} is not supported (1e-5)"
            )
    if int(vc.get("num_channels", 3)) != 3:
        raise CheckpointError(
            f"vision_config.num_channels {vc['num_channels']} is not supported (3)"
        )
    text = text_tower(tc)
    vision = vision_tower(vc, int(vc["image_size"]))
    config = CLIPConfig(
        embed_dim=int(hf.get("projection_dim", 512)),
        vision=vision,
        text=text,
        logit_scale_init=float(hf.get("logit_scale_init_value", 2.6592)),
    )
    return config.replace(**overrides) if overrides else config


def config_to_hf(config: CLIPConfig) -> dict[str, Any]:
    """The ``config.json`` dict of a HF CLIPModel equivalent to ``config``."""
    if not isinstance(config.vision, ViTConfig):
        raise CheckpointError(
            "Hugging Face's CLIPModel has no ResNet image tower; only ViT models convert to 'hf'"
        )
    v, t = config.vision, config.text
    if not is_clip_architecture(config):
        raise CheckpointError(
            "this model's architecture has no transformers equivalent: CLIPModel holds CLIP's "
            "(class token, ln_pre, causal text read at EOT, ...) and SiglipModel holds SigLIP's "
            "(no class token, MAP head, bicubic position resampling, a logit bias); convert it "
            "to 'cliplab' instead"
        )
    if config.logit_bias_init is not None:
        raise CheckpointError(
            "Hugging Face's CLIPModel has no logit bias (this model was trained with the SigLIP "
            "loss); convert it to 'cliplab' or 'openclip' instead"
        )
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.logit_scale_init,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": {
            "model_type": "clip_text_model",
            **text_tower_dict(t),
            "projection_dim": config.embed_dim,
            # OpenAI's tokens: SOT 49406, EOT 49407. HF pools at the first EOT, OpenAI at the
            # highest id: the same position for every sequence cliplab's tokenizer makes.
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            **vision_tower_dict(v),
            "projection_dim": config.embed_dim,
        },
    }


def from_hf(
    state_dict: Mapping[str, torch.Tensor],
    flat: Mapping[str, str] = _FLAT_MAP,
    transposed: Mapping[str, str] = _TRANSPOSED,
    what: str = "a HF CLIPModel",
) -> dict[str, torch.Tensor]:
    """HF CLIPModel weights -> cliplab keys (q/k/v fused, projections transposed). ``flat``
    and ``transposed`` rename the keys outside the blocks (other models of the CLIP family
    in transformers, e.g. SiglipModel, share the block layout)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        if _IGNORED.match(key):
            continue
        if key in flat:
            out[flat[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        elif m := _BLOCK.match(key):
            tower, index, rest = m.groups()
            prefix = _TOWERS[f"{tower}.encoder.layers."] + f"{index}."
            if rest in _BLOCK_MAP:
                out[prefix + _BLOCK_MAP[rest]] = value
            elif q := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                qkv.setdefault((prefix, q.group(2)), {})[q.group(1)] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"unexpected keys for {what}: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(
                f"{prefix}: attention {kind} needs q, k and v projections, found {sorted(parts)}"
            )
        name = "attn.in_proj_weight" if kind == "weight" else "attn.in_proj_bias"
        out[prefix + name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_hf(
    state_dict: Mapping[str, torch.Tensor],
    flat_map: Mapping[str, str] = _FLAT_MAP,
    transposed_map: Mapping[str, str] = _TRANSPOSED,
    what: str = "Hugging Face CLIPModel",
) -> dict[str, torch.Tensor]:
    """cliplab weights (ViT) -> HF CLIPModel keys (``flat_map``, ``transposed_map``: as
    :func:`from_hf`'s, HF name -> cliplab name)."""
    flat = {v: k for k, v in flat_map.items()}
    transposed = {v: k for k, v in transposed_map.items()}
    block_map = {v: k for k, v in _BLOCK_MAP.items()}
    towers = {v: k for k, v in _TOWERS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in flat:
            out[flat[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        else:
            m = re.match(
                r"^(text\.transformer\.resblocks\.|visual\.transformer\.resblocks\.)(\d+)\.(.+)$",
                key,
            )
            if not m:
                raise CheckpointError(f"key {key!r} has no {what} equivalent")
            prefix = towers[m.group(1)] + f"{m.group(2)}."
            rest = m.group(3)
            if rest in block_map:
                out[prefix + block_map[rest]] = value
            elif rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
            else:
                raise CheckpointError(f"key {key!r} has no {what} equivalent")
    return out


def write_hf_tokenizer_files(directory: Path, context_length: int) -> None:
    """vocab.json, merges.txt and tokenizer config for HF's CLIPTokenizer (OpenAI's BPE)."""
    from cliplab.tokenizer import default_bpe_path, default_tokenizer

    lines = gzip.decompress(default_bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the slice OpenAI's SimpleTokenizer uses
    vocab = default_tokenizer().encoder
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_hf_preprocessor_config(directory: Path, image_size: int, mean: tuple, std: tuple) -> None:
    """preprocessor_config.json for HF's CLIPImageProcessor (resize, center crop, normalise)."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "do_convert_rgb": True,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
