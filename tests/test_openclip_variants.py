"""OpenCLIP's ViT variants in wide use (ViT-H-14, ViT-bigG-14, GELU, ``no_ln_pre``,
``final_ln_after_pool``, average pooling, other head widths, SigLIP-style text switches) load
from OpenCLIP hub directories to OpenCLIP's own features, on tiny perturbed models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cliplab
import refs
import test_models
from cliplab.checkpoints import openclip
from cliplab.models import CLIP
from cliplab.presets import PRESETS
from test_models import random_tokens, relative_error, with_bug

TOL = 1e-4
LARGE = ["ViT-H-14", "ViT-H-14-378", "ViT-g-14", "ViT-bigG-14"]

#: Tiny OpenCLIP configs, each with one variant (a vision_cfg / text_cfg / model_cfg update).
BASE_VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
BASE_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
VARIANTS = {
    "gelu": ({}, {}, {}),
    "quick_gelu": ({}, {}, {"quick_gelu": True}),
    "head width 16": ({"head_width": 16}, {"heads": 4}, {}),
    "no_ln_pre": ({"no_ln_pre": True}, {}, {}),
    "pool avg": ({"pool_type": "avg"}, {}, {}),
    "pool avg, final_ln_after_pool": ({"pool_type": "avg", "final_ln_after_pool": True}, {}, {}),
    "final_ln_after_pool (tok)": ({"final_ln_after_pool": True}, {}, {}),
    "mlp_ratio, eps, gelu-tanh": (
        {"mlp_ratio": 2.5, "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
        {"mlp_ratio": 3.0, "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
        {},
    ),
    "bidirectional text, last token, biased projection": (
        {},
        {"no_causal_mask": True, "pool_type": "last", "proj_bias": True},
        {"init_logit_bias": -10.0},
    ),
    "text without projection": ({}, {"proj_type": "none"}, {"embed_dim": 64}),
}


def reference(variant: str) -> tuple[torch.nn.Module, dict]:
    """OpenCLIP's CLIP for a variant (perturbed) and its model config."""
    oc = refs.open_clip()
    vision, text, top = VARIANTS[variant]
    model_cfg = {"embed_dim": 32, **top}
    model_cfg |= {"vision_cfg": {**BASE_VISION, **vision}, "text_cfg": {**BASE_TEXT, **text}}
    torch.manual_seed(0)
    ref = oc.model.CLIP(**model_cfg).eval()
    return refs.perturb_(ref, seed=5), model_cfg


def hub_directory(tmp_path: Path, ref: torch.nn.Module, model_cfg: dict) -> Path:
    from safetensors.torch import save_file

    tmp_path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return tmp_path


def errors(ours: CLIP, ref: torch.nn.Module) -> tuple[float, float, float]:
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = random_tokens(3, seed=2)
    tokens[0, -1], tokens[0, -2] = 0, 49407  # padding after every EOT
    with torch.no_grad():
        ref_logits = ref.get_logits(images, tokens)[0]
        return (
            relative_error(ours.encode_image(images), ref.encode_image(images)),
            relative_error(ours.encode_text(tokens), ref.encode_text(tokens)),
            relative_error(ours(images, tokens)[0], ref_logits),
        )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_open_clip_variants(tmp_path: Path, variant: str) -> None:
    ref, model_cfg = reference(variant)
    ours, _ = cliplab.load(hub_directory(tmp_path, ref, model_cfg))
    found = errors(ours, ref)
    assert max(found) <= TOL, (variant, found)


@pytest.mark.parametrize("name", LARGE)
def test_large_presets_are_open_clips_configs(name: str) -> None:
    oc = refs.open_clip()
    model_cfg = oc.get_model_config(name)
    config, resize = openclip.config_from_openclip(model_cfg, name)
    assert config == PRESETS[name] and resize is None
    with torch.device("meta"):
        ours = CLIP(PRESETS[name])
        ref = oc.model.CLIP(**model_cfg)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    shapes = {k: tuple(v.shape) for k, v in openclip.from_openclip(ref.state_dict(), False).items()}
    assert shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_export_openclip_is_read_by_open_clip(tmp_path: Path) -> None:
    """cliplab's OpenCLIP hub directory builds OpenCLIP's model with the same features."""
    ref, model_cfg = reference("pool avg, final_ln_after_pool")
    ours, _ = cliplab.load(hub_directory(tmp_path / "in", ref, model_cfg))
    out = openclip.export_openclip(ours, tmp_path / "out")
    written = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    oc = refs.open_clip()
    back = oc.model.CLIP(**written).eval()
    from safetensors.torch import load_file

    back.load_state_dict(load_file(str(out / "open_clip_model.safetensors")))
    assert max(errors(ours, back)) <= 1e-6


VARIANT_BUGS = {
    "LayerNorm before the average, not after": (
        "pool avg, final_ln_after_pool",
        (
            "vit.py",
            ("VisionTransformer",),
            "return self.ln_post(x[:, prefix:].mean(dim=1))",
            "return self.ln_post(x[:, prefix:]).mean(dim=1)",
        ),
    ),
    "class token in the average": (
        "pool avg",
        (
            "vit.py",
            ("VisionTransformer",),
            "return self.ln_post(x[:, prefix:]).mean(dim=1)",
            "return self.ln_post(x).mean(dim=1)",
        ),
    ),
}


@pytest.mark.parametrize("bug", list(VARIANT_BUGS))
def test_variant_parity_catches_deliberate_bugs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug: str
) -> None:
    variant, edit = VARIANT_BUGS[bug]
    monkeypatch.setitem(test_models.BUGS, bug, edit)
    ref, model_cfg = reference(variant)
    ours, _ = cliplab.load(hub_directory(tmp_path, ref, model_cfg))
    assert max(errors(ours, ref)) <= TOL
    found = errors(with_bug(ours, bug), ref)
    assert max(found) > 1e-2, (bug, found)


def test_unsupported_open_clip_features_are_refused(tmp_path: Path) -> None:
    for tower, key, value in (
        ("vision_cfg", "pool_type", "none"),
        ("vision_cfg", "ls_init_value", 1e-5),
        ("text_cfg", "embed_cls", True),
        ("text_cfg", "pool_type", "eos"),
    ):
        model_cfg = {"embed_dim": 32, "vision_cfg": dict(BASE_VISION), "text_cfg": dict(BASE_TEXT)}
        model_cfg[tower][key] = value
        with pytest.raises(cliplab.CheckpointError, match=f"{key}="):
            openclip.config_from_openclip(model_cfg, "here")
