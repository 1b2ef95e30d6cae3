"""SigLIP and SigLIP 2: the presets build as OpenCLIP builds them, checkpoints in transformers'
(SiglipModel, Siglip2Model) and OpenCLIP's (timm tower) layouts load to the same image and
text features and logits, the preprocessing and the tokenizers give transformers' pixels and
ids, zero-shot scores are sigmoids, and deliberate bugs fail the parity tests.

Every reference model is tiny, random and perturbed (``refs.perturb_``): no download."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliplab
import refs
import test_models
from cliplab.checkpoints import api, openclip, siglip
from cliplab.models import CLIP
from cliplab.presets import PRESETS
from cliplab.tokenizer.files import FileTokenizer, get_tokenizer
from cliplab.transforms import EvalTransform
from test_models import relative_error, with_bug

TOL = 1e-4
VOCAB, CONTEXT, SIZE, PATCH = 300, 16, 32, 8
SIGLIP_PRESETS = [n for n in PRESETS if "SigLIP" in n or n == "tiny-siglip"]
TEXTS = [
    "a photo of a cat.",
    "",
    "   ",
    "</s>",
    "a</s>b",
    "  </s>  x",
    "<unk>",
    "<pad>",
    "<eos>",
    "\u2581",
    "\u2581\u2581 cat",
    "CAT!!! Dog??",
    "東京タワー 😀 ñ",
    "x" * 300,
    "a " * 60,
    "tab\tnew\nline\r\n",
    "\x00\x01 ctrl \u200b zero width",
    "ｆｕｌｌ width",
    "<0x41>",
    "Café crème brûlée, naïve résumé",
]
CORPUS = [
    "a photo of a cat",
    "a photo of a dog",
    "two dogs playing in the snow",
    "the quick brown fox jumps over the lazy dog",
    "Café crème brûlée",
    "naïve résumé",
    "東京 タワー",
    "emoji 😀 party",
    "zero-shot classification with sigmoid",
    "numbers 123 4567 89",
]


# -- reference models and checkpoint directories ---------------------------------------------


def hf_reference(version: int, seed: int = 3) -> torch.nn.Module:
    """A tiny perturbed SiglipModel (1) or Siglip2Model (2)."""
    tf = refs.transformers()
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    vision |= {"num_attention_heads": 2, "patch_size": PATCH}
    text = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128}
    text |= {"num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": CONTEXT}
    if version == 1:
        config = tf.SiglipConfig(text_config=text, vision_config={**vision, "image_size": SIZE})
        cls = tf.SiglipModel
    else:
        grid = SIZE // PATCH
        config = tf.Siglip2Config(
            text_config=text, vision_config={**vision, "num_patches": grid**2}
        )
        cls = tf.Siglip2Model
    torch.manual_seed(0)
    return refs.perturb_(cls(config).eval(), seed=seed)


def patchify(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Square images as Siglip2Model's inputs (its image processor's patch order)."""
    b, c, h, w = images.shape
    gh, gw = h // PATCH, w // PATCH
    patches = images.reshape(b, c, gh, PATCH, gw, PATCH).permute(0, 2, 4, 3, 5, 1)
    return {
        "pixel_values": patches.reshape(b, gh * gw, -1),
        "pixel_attention_mask": torch.ones(b, gh * gw, dtype=torch.long),
        "spatial_shapes": torch.tensor([[gh, gw]] * b),
    }


def hf_outputs(ref: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor):
    """transformers' image features, text features and logits per image."""
    pixels = patchify(images) if "Siglip2" in type(ref).__name__ else {"pixel_values": images}
    with torch.no_grad():
        image = ref.get_image_features(**pixels)
        text = ref.get_text_features(input_ids=tokens)
        logits = ref(input_ids=tokens, **pixels).logits_per_image
    return test_models._features(image), test_models._features(text), logits


def train_sentencepiece(directory: Path) -> None:
    """A tiny SigLIP-style SentencePiece model (``</s>`` = 1) in transformers' layout."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=model,
        vocab_size=120,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        eos_piece="</s>",
        character_coverage=1.0,
        add_dummy_prefix=False,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "SiglipTokenizer", "model_max_length": CONTEXT}
    config |= {
        "do_lower_case": True,
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def train_gemma_bpe(directory: Path, post_processor: bool = False, side: str | None = "right"):
    """A tiny Gemma-style BPE tokenizer.json (byte fallback, ``▁`` for spaces), as SigLIP 2's."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    if post_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
        )
    data = json.loads(tok.to_str())
    for b in range(256):  # byte-fallback pieces, ordinary vocabulary entries as in Gemma's
        data["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(data["model"]["vocab"]))
    (directory / "tokenizer.json").write_text(json.dumps(data))
    config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>"}
    config |= {"pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": CONTEXT}
    if side:
        config["padding_side"] = side
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def hf_directory(tmp_path: Path, version: int) -> tuple[Path, torch.nn.Module]:
    """A transformers SiglipModel / Siglip2Model directory with tokenizer and processor files."""
    ref = hf_reference(version)
    directory = tmp_path / f"siglip{version}"
    ref.save_pretrained(directory)
    if version == 1:
        train_sentencepiece(directory)
        processor = {"image_processor_type": "SiglipImageProcessor", "resample": 3}
        processor |= {"size": {"height": SIZE, "width": SIZE}}
    else:
        train_gemma_bpe(directory)
        processor = {"image_processor_type": "Siglip2ImageProcessor", "resample": 2}
        processor |= {"patch_size": PATCH, "max_num_patches": (SIZE // PATCH) ** 2}
    processor |= {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "do_normalize": True}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory, ref


def inputs(seed: int = 1, size: int = SIZE, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    return images, torch.randint(0, VOCAB, (n, CONTEXT), generator=g)


def parity(ours: CLIP, ref: torch.nn.Module, size: int = SIZE) -> tuple[float, float, float]:
    """Relative errors of cliplab's image features, text features and logits (with the
    bias) against transformers'."""
    images, tokens = inputs(size=size)
    ref_image, ref_text, ref_logits = hf_outputs(ref, images, tokens)
    with torch.no_grad():
        return (
            relative_error(ours.encode_image(images), ref_image),
            relative_error(ours.encode_text(tokens), ref_text),
            relative_error(ours(images, tokens)[0], ref_logits),
        )


# -- architectures ---------------------------------------------------------------------------


def test_every_siglip_preset_builds_as_open_clip_builds_it() -> None:
    """Parameter counts and shapes of OpenCLIP's models of the same names (timm towers)."""
    oc = refs.open_clip()
    compared = 0
    for name in SIGLIP_PRESETS:
        with torch.device("meta"):
            ours = CLIP(PRESETS[name])
        assert ours.num_parameters() > 0
        model_cfg = oc.get_model_config(name)
        if model_cfg is None:
            continue
        with torch.device("meta"):
            ref = oc.model.CustomTextCLIP(
                **{k: v for k, v in model_cfg.items() if k != "custom_text"}
            )
        shapes = {
            k: tuple(v.shape) for k, v in openclip.from_openclip(ref.state_dict(), True).items()
        }
        assert shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}, name
        assert ours.num_parameters() == sum(p.numel() for p in ref.parameters()), name
        compared += 1
    assert compared >= 20


def test_siglip_presets_read_as_open_clip_configs() -> None:
    """cliplab's reading of OpenCLIP's own configs gives the presets (but for OpenCLIP's
    exact-GELU choices in some timm towers and SigLIP 1 text towers)."""
    oc = refs.open_clip()
    for name in SIGLIP_PRESETS:
        model_cfg = oc.get_model_config(name)
        if model_cfg is None:
            continue
        config, _ = openclip.config_from_openclip(model_cfg, name)
        preset = PRESETS[name].replace(activation="gelu_tanh")
        config = config.replace(activation="gelu_tanh", logit_scale_init=preset.logit_scale_init)
        assert config.replace(**{"text.tokenizer": preset.text.tokenizer}) == preset, name


def test_timm_siglip_table_matches_timm() -> None:
    """cliplab's table of timm's SigLIP towers against timm's own definitions."""
    refs.open_clip()
    import timm

    names = [
        n for n in timm.list_models("vit_*_siglip_*") if re.fullmatch(r"vit_\w+_siglip_\d+", n)
    ]
    assert len(names) >= 15
    for name in names:
        if not openclip._TIMM_NAME.match(name) or "gap" in name:
            continue
        with torch.device("meta"):
            trunk = timm.create_model(name, num_classes=0, global_pool="map")
        vision, _ = openclip.timm_siglip_tower(name, "map", "none", name)
        block = trunk.blocks[0]
        assert (vision.width, vision.layers) == (trunk.embed_dim, len(trunk.blocks)), name
        assert vision.heads == block.attn.num_heads, name
        assert vision.mlp_width == block.mlp.fc1.out_features, name
        assert vision.patch_size == trunk.patch_embed.proj.kernel_size[0], name
        assert vision.grid_size**2 == trunk.pos_embed.shape[1], name
        act = block.mlp.act
        tanh = type(act).__name__ == "GELUTanh" or getattr(act, "approximate", "") == "tanh"
        assert tanh or type(act).__name__ == "GELU", (name, act)
        assert (vision.activation == "gelu_tanh") == tanh, name


def test_tiny_siglip_forward_backward_and_config() -> None:
    model = CLIP(PRESETS["tiny-siglip"])
    images, _ = inputs()
    tokens = torch.randint(0, 1000, (3, 16))
    logits, _ = model(images, tokens)
    labels = 2 * torch.eye(3) - 1
    torch.nn.functional.logsigmoid(labels * logits).sum().neg().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.logit_bias.grad.abs() > 0
    assert not hasattr(model.visual, "class_embedding") and model.visual.proj is None
    config = PRESETS["tiny-siglip"]
    assert cliplab.CLIPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="length_groups must be 0"):
        config.replace(**{"text.length_groups": 4})
    with pytest.raises(ValueError, match='pool "tok" needs a class token'):
        config.replace(**{"vision.pool": "tok"})
    with pytest.raises(ValueError, match="needs vision.width"):
        config.replace(**{"vision.width": 96, "vision.heads": 3})


# -- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_parity_with_transformers(version: int) -> None:
    ref = hf_reference(version)
    config = siglip.config_from_hf(ref.config.to_dict())
    ours = CLIP(config).eval()
    ours.load_state_dict(siglip.from_hf(ref.state_dict(), PATCH))
    errors = parity(ours, ref)
    assert max(errors) <= TOL, errors
    assert ours.logit_bias.item() == pytest.approx(ref.logit_bias.item())
    # and back: cliplab -> transformers keys reproduce SigLIP's state dict exactly
    if version == 1:
        back = siglip.to_hf(ours.state_dict())
        ref_sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
        assert back.keys() == ref_sd.keys()
        assert all(torch.equal(back[k], ref_sd[k]) for k in ref_sd)


def test_siglip2_at_another_resolution_resamples_as_transformers() -> None:
    """NaFlex positions resampled (bilinear, antialiased) to a 6 x 6 grid from 4 x 4."""
    ref = hf_reference(2)
    ours = CLIP(siglip.config_from_hf(ref.config.to_dict())).eval()
    ours.load_state_dict(siglip.from_hf(ref.state_dict(), PATCH))
    assert max(parity(ours, ref, size=48)) <= TOL


def open_clip_reference(tanh_vision: bool, monkeypatch: pytest.MonkeyPatch):
    """OpenCLIP's CustomTextCLIP with a tiny timm SigLIP tower (registered in timm under a
    name cliplab's table is taught), its model config, perturbed."""
    oc = refs.open_clip()
    import timm
    from timm.models.vision_transformer import _create_vision_transformer

    name = f"vit_tiny{int(tanh_vision)}_patch{PATCH}_siglip_{SIZE}"
    if name not in timm.list_models():
        act = {"act_layer": "gelu_tanh"} if tanh_vision else {}

        def build(pretrained: bool = False, **kwargs):
            args = dict(img_size=SIZE, patch_size=PATCH, embed_dim=64, depth=2, num_heads=2)
            args |= dict(class_token=False, global_pool="map", **act)
            return _create_vision_transformer(
                "vit_base_patch16_siglip_224", pretrained=False, **dict(args, **kwargs)
            )

        build.__name__ = name
        timm.models.register_model(build)
    monkeypatch.setitem(openclip.TIMM_SIGLIP_SIZES, f"tiny{int(tanh_vision)}", (64, 2, 2, 4.0))
    if tanh_vision:
        monkeypatch.setattr(openclip, "TIMM_GELU_TANH", openclip.TIMM_GELU_TANH | {name})
    vision = {"image_size": SIZE, "timm_model_name": name, "timm_model_pretrained": False}
    vision |= {"timm_pool": "map", "timm_proj": "none"}
    text = {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 64, "heads": 2, "layers": 2}
    text |= {"no_causal_mask": True, "proj_bias": True, "pool_type": "last"}
    text |= {"norm_kwargs": {"eps": 1e-6}, "hf_tokenizer_name": "local"}
    if tanh_vision:  # SigLIP 2's configs: GELU-tanh text towers
        text["act_kwargs"] = {"approximate": "tanh"}
    model_cfg = {"embed_dim": 64, "init_logit_bias": -10, "vision_cfg": vision, "text_cfg": text}
    ref = oc.model.CustomTextCLIP(**model_cfg).eval()
    return refs.perturb_(ref, seed=4), {**model_cfg, "custom_text": True}


@pytest.mark.parametrize("tanh_vision", [False, True], ids=["siglip", "siglip2"])
def test_parity_with_open_clip_hub_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tanh_vision: bool
) -> None:
    from safetensors.torch import save_file

    ref, model_cfg = open_clip_reference(tanh_vision, monkeypatch)
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()},
        str(tmp_path / "open_clip_model.safetensors"),
    )
    preprocess = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
    preprocess["resize_mode"] = "squash"
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    ours, transform = cliplab.load(tmp_path)
    assert ours.config.vision.activation == ("gelu_tanh" if tanh_vision else "gelu")
    assert ours.config.text.tokenizer == "files:unknown"  # no tokenizer files in the folder
    images, tokens = inputs()
    with torch.no_grad():
        errors = (
            relative_error(ours.encode_image(images), ref.encode_image(images)),
            relative_error(ours.encode_text(tokens), ref.encode_text(tokens)),
            relative_error(ours(images, tokens)[0], ref.get_logits(images, tokens)[0]),
        )
    assert max(errors) <= TOL, errors
    # OpenCLIP's own transform for that preprocess_cfg, on PIL images
    oc = refs.open_clip()
    ref_transform = oc.image_transform(
        SIZE, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash"
    )
    for image in pil_images():
        assert (transform(image) - ref_transform(image)).abs().max() <= 1e-5


# -- deliberate bugs -------------------------------------------------------------------------

SIGLIP_BUGS = {
    "text pooled at the first position, not the last": (
        "text.py",
        ("TextTransformer",),
        "return x[:, -1]",
        "return x[:, 0]",
    ),
    "causal text tower": (
        "text.py",
        ("TextTransformer",),
        "x = self.transformer(x, causal=self.config.causal)",
        "x = self.transformer(x, causal=True)",
    ),
    "MAP head's LayerNorm skipped": (
        "vit.py",
        ("AttentionPool",),
        "y = y + self.mlp(self.ln(y))",
        "y = y + self.mlp(y)",
    ),
    "ln_post skipped before the MAP head": (
        "vit.py",
        ("VisionTransformer",),
        "return self.attn_pool(self.ln_post(x))",
        "return self.attn_pool(x)",
    ),
}


@pytest.mark.parametrize("bug", list(SIGLIP_BUGS))
def test_siglip_parity_catches_deliberate_bugs(bug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(test_models.BUGS, bug, SIGLIP_BUGS[bug])
    ref = hf_reference(1)
    ours = CLIP(siglip.config_from_hf(ref.config.to_dict())).eval()
    ours.load_state_dict(siglip.from_hf(ref.state_dict(), PATCH))
    assert max(parity(ours, ref)) <= TOL
    errors = parity(with_bug(ours, bug), ref)
    assert max(errors) > 1e-2, (bug, errors)


# -- checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_load_save_convert_round_trip(tmp_path: Path, version: int) -> None:
    directory, ref = hf_directory(tmp_path, version)
    model, transform = cliplab.load(directory)
    assert max(parity(model, ref)) <= TOL
    assert model.config.text.tokenizer.startswith("files:") and transform.resize_mode == "squash"
    texts = ["a photo of a cat", "Two DOGS!"]
    ids = get_tokenizer(model)(texts)
    assert torch.equal(ids, get_tokenizer(directory)(texts))
    saved = cliplab.save(model, tmp_path / "saved", preprocess={"resize_mode": "squash"})
    again, _ = cliplab.load(saved)
    assert again.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert torch.equal(get_tokenizer(saved)(texts), ids)
    if version == 1:  # transformers' SiglipModel directory, read back by transformers
        tf = refs.transformers()
        api.convert(directory, tmp_path / "hf", to="hf")
        exported = tf.SiglipModel.from_pretrained(tmp_path / "hf").eval()
        assert max(parity(model, exported)) <= 1e-5
        tokenizer = tf.AutoTokenizer.from_pretrained(tmp_path / "hf")
        hf_ids = tokenizer(texts, padding="max_length", max_length=CONTEXT, truncation=True)
        assert hf_ids["input_ids"] == ids.tolist()
    else:  # SigLIP 2's bilinear resampling has no SiglipModel equivalent
        with pytest.raises(cliplab.CheckpointError, match="no transformers equivalent"):
            api.convert(directory, tmp_path / "hf", to="hf")


def test_bad_siglip_configs_fail_clearly(tmp_path: Path) -> None:
    data = {"model_type": "siglip", "vision_config": {"vision_use_head": False}}
    with pytest.raises(cliplab.CheckpointError, match="vision_use_head"):
        siglip.config_from_hf(data)
    data = {"model_type": "siglip", "text_config": {"projection_size": 32}}
    with pytest.raises(cliplab.CheckpointError, match="projection_size 32"):
        siglip.config_from_hf(data)
    with pytest.raises(cliplab.CheckpointError, match="hidden_act 'relu'"):
        siglip.config_from_hf({"model_type": "siglip2", "text_config": {"hidden_act": "relu"}})
    with pytest.raises(cliplab.CheckpointError, match="timm image tower 'convnext_base'"):
        openclip.timm_siglip_tower("convnext_base", "map", "none", "here")
    model_cfg = {"embed_dim": 8, "vision_cfg": {"attentional_pool": True}, "text_cfg": {}}
    with pytest.raises(cliplab.CheckpointError, match="attentional_pool=True"):
        openclip.config_from_openclip(model_cfg, "here")
    with pytest.raises(cliplab.CheckpointError, match="OpenAI's layout holds CLIP's"):
        api.export_openai(CLIP(PRESETS["tiny-siglip"]), tmp_path / "siglip.pt")
    with pytest.raises(ValueError, match="carried no tokenizer files"):
        get_tokenizer(CLIP(PRESETS["tiny-siglip"]))  # a preset: its tokenizer files are unknown


# -- preprocessing ---------------------------------------------------------------------------


def pil_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((100, 80), (30, 50), (SIZE, SIZE), (201, 333), (7, 300))
    ]
    images.append(Image.fromarray(rng.integers(0, 256, (60, 45), dtype=np.uint8)))  # L
    return images


@pytest.mark.parametrize("resample", [2, 3], ids=["bilinear", "bicubic"])
def test_preprocessing_equals_siglip_image_processors(resample: int) -> None:
    tf = refs.transformers()
    size = {"height": SIZE, "width": SIZE}
    processors = {
        "torch": tf.SiglipImageProcessor(size=size, resample=resample),
        "pil": tf.SiglipImageProcessorPil(size=size, resample=resample),
    }
    interpolation = {2: "bilinear", 3: "bicubic"}[resample]
    for resampler, processor in processors.items():
        ours = EvalTransform(
            SIZE,
            (0.5,) * 3,
            (0.5,) * 3,
            background=(255, 255, 255),
            resize_mode="squash",
            interpolation=interpolation,
            resampler=resampler,
        )
        for image in pil_images():
            expected = processor(image, return_tensors="pt")["pixel_values"][0]
            assert (ours(image) - expected).abs().max() <= 1e-5, (resampler, image.size)


def test_loaded_preprocessing_is_the_directorys_processor(tmp_path: Path) -> None:
    tf = refs.transformers()
    directory, _ = hf_directory(tmp_path, 1)
    _, transform = cliplab.load(directory)
    processor = tf.AutoImageProcessor.from_pretrained(directory)
    for image in pil_images():
        expected = processor(image, return_tensors="pt")["pixel_values"][0]
        assert (transform(image) - expected).abs().max() <= 1e-5
    # SO400M/14 at 384: resized to 384, the model sees the top-left 378
    crop = EvalTransform(378, resize_mode="squash", resize_size=384)
    image = pil_images()[3]
    full = EvalTransform(384, resize_mode="squash")(image)
    assert torch.equal(crop(image), full[:, :378, :378])


# -- tokenizers ------------------------------------------------------------------------------


def test_sentencepiece_ids_equal_siglip_tokenizer(tmp_path: Path) -> None:
    tf = refs.transformers()
    train_sentencepiece(tmp_path)
    ref = tf.AutoTokenizer.from_pretrained(tmp_path)
    assert type(ref).__name__ == "SiglipTokenizer"
    ours = FileTokenizer(tmp_path)
    for length in (CONTEXT, 5):
        expected = ref(TEXTS, padding="max_length", max_length=length, truncation=True)
        assert ours(TEXTS, context_length=length).tolist() == expected["input_ids"]
    with pytest.raises(ValueError, match="more than the context length 16"):
        ours(["x" * 300], truncate=False)


@pytest.mark.parametrize(
    "post_processor,side", [(False, "right"), (True, "right"), (False, None)], ids=str
)
def test_gemma_ids_equal_siglip2_tokenizer(tmp_path: Path, post_processor: bool, side) -> None:
    tf = refs.transformers()
    train_gemma_bpe(tmp_path, post_processor, side)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    ref = tf.AutoTokenizer.from_pretrained(tmp_path)
    assert type(ref).__name__ == "Siglip2Tokenizer"
    ours = get_tokenizer(tmp_path)
    for length in (CONTEXT, 4):
        expected = ref(TEXTS, padding="max_length", max_length=length, truncation=True)
        assert ours(TEXTS, context_length=length).tolist() == expected["input_ids"]


# -- sigmoid zero-shot scores ----------------------------------------------------------------


def test_zero_shot_probabilities_are_sigmoids(tmp_path: Path) -> None:
    from cliplab.zeroshot import classify_images

    directory, ref = hf_directory(tmp_path, 1)
    model, transform = cliplab.load(directory)
    images = pil_images()[:3]
    labels = ["cat", "dog", "snow fox"]
    probs = classify_images(model, transform, images, labels, templates=["{}"])
    tf = refs.transformers()
    processor = tf.AutoImageProcessor.from_pretrained(directory)
    tokenizer = tf.AutoTokenizer.from_pretrained(directory)
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    tokens = tokenizer(labels, padding="max_length", max_length=CONTEXT, return_tensors="pt")
    with torch.no_grad():
        logits = ref(input_ids=tokens["input_ids"], pixel_values=pixels).logits_per_image
    assert relative_error(probs, torch.sigmoid(logits)) <= TOL
    assert not torch.allclose(probs.sum(-1), torch.ones(3))  # one sigmoid per label
    assert math.exp(float(model.logit_scale)) == pytest.approx(float(ref.logit_scale.exp()))


def test_fine_tuning_a_siglip_checkpoint_uses_its_tokenizer_and_normalisation(
    tmp_path: Path,
) -> None:
    """``[model] pretrained`` on a SigLIP directory: training captions go through its
    SentencePiece tokenizer (ids equal to transformers'), images through its 0.5/0.5
    normalisation; the saved fine-tune carries the tokenizer files, and a resumed run in a
    fresh process (the tokenizer registry emptied) reads them from the run directory."""
    from cliplab.tokenizer import files
    from cliplab.train import Config, Trainer

    directory, _ = hf_directory(tmp_path, 1)
    folder = tmp_path / "classes"
    for name, colour in (("cat", "orange"), ("dog", "brown"), ("snow fox", "white")):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (SIZE, SIZE), colour).save(folder / name / f"{i}.png")
    config = {
        "model": {"pretrained": str(directory)},
        "data": {"batch_size": 4, "sources": [{"kind": "classes", "path": str(folder)}]},
        "optim": {"lr": 1e-4, "warmup_steps": 1},
        "train": {"steps": 2, "loss": "siglip", "threads": 1},
        "log": {"tensorboard": False, "progress": False, "plots": False},
    }
    out = tmp_path / "run"
    trainer = Trainer(Config.from_dict(config), output=out)
    tokenizer = refs.transformers().AutoTokenizer.from_pretrained(directory)
    captions = ["a photo of a snow fox.", "a cat"]
    expected = tokenizer(captions, padding="max_length", max_length=CONTEXT, truncation=True)
    stream = trainer.loader.stream
    assert stream.tokenize(captions).tolist() == expected["input_ids"]
    assert stream.augment.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert trainer.fit()["status"] == "complete"
    assert (out / "model" / "spiece.model").is_file()
    files._REGISTRY.clear()  # as in a new process
    shutil.rmtree(directory)  # and the source gone
    config["train"]["steps"] = 3
    resumed = Trainer(Config.from_dict(config), output=out)
    assert resumed.loader.stream.tokenize(captions).tolist() == expected["input_ids"]
    assert resumed.fit()["resumed_from"] == 2
