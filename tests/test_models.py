"""Architectures: every preset builds with the references' parameter counts, and outputs
equal OpenAI's, OpenCLIP's and Hugging Face's implementations for the same weights.

Parity is checked on perturbed weights (``refs.perturb_``): at initialisation every
LayerNorm is 1/0 and every bias 0, where a wrong model can pass.
``test_parity_catches_deliberate_bugs`` shows that each of four classic bugs fails it."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch

import refs
from cliplab.checkpoints import hf, openai
from cliplab.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig
from cliplab.models import CLIP
from cliplab.presets import PRESETS, canonical_name, get_config

# Parameter counts of OpenAI's released models, as OpenCLIP reports them.
KNOWN_COUNTS = {
    "RN50": 102_007_137,
    "ViT-B-32": 151_277_313,
    "ViT-B-16": 149_620_737,
    "ViT-L-14": 427_616_513,
}

OPENAI_PRESETS = [
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "ViT-B-32",
    "ViT-B-16",
    "ViT-L-14",
    "ViT-L-14-336",
]


def openai_args(config: CLIPConfig) -> tuple:
    """The positional arguments of OpenAI's ``CLIP(...)`` for a cliplab config."""
    v, t = config.vision, config.text
    # OpenAI's CLIP class derives the vision heads from the width and always uses QuickGELU
    rule = v.width // 64 if isinstance(v, ViTConfig) else v.width * 32 // 64
    assert v.heads == rule and t.activation == "quick_gelu", "OpenAI's CLIP cannot express this"
    if isinstance(v, ViTConfig):
        vision = (v.image_size, v.layers, v.width, v.patch_size)
    else:
        vision = (v.image_size, v.layers, v.width, None)
    return (config.embed_dim, *vision, t.context_length, t.vocab_size, t.width, t.heads, t.layers)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def random_tokens(n: int, context: int = 77, vocab: int = 49408, seed: int = 0) -> torch.Tensor:
    """Rows of SOT, random ids, EOT at varied positions, then zero padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, context - 1, (1,), generator=g)) if i else context - 2
        tokens[i, 0] = vocab - 2
        tokens[i, 1 : length + 1] = torch.randint(1, vocab - 2, (length,), generator=g)
        tokens[i, length + 1] = vocab - 1
    return tokens


@pytest.mark.parametrize("name", OPENAI_PRESETS)
def test_openai_presets_match_openai_parameter_counts(name: str) -> None:
    config = PRESETS[name]
    with torch.device("meta"):
        ours = CLIP(config)
        ref = refs.openai_model_module().CLIP(*openai_args(config))
    ref_count = sum(p.numel() for p in ref.parameters())
    assert ours.num_parameters() == ref_count
    if name in KNOWN_COUNTS:
        assert ref_count == KNOWN_COUNTS[name]
    # Same keys and shapes as OpenAI's model (cliplab keeps the text tower under "text.").
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in openai.to_openai(ours.state_dict()).items()}
    assert our_shapes == ref_shapes


def test_vit_b32_text_encoder_is_the_papers_63m() -> None:
    with torch.device("meta"):
        model = CLIP(PRESETS["ViT-B-32"])
    text_params = sum(p.numel() for p in model.text.parameters())
    assert 63_000_000 <= text_params < 64_000_000, text_params


#: Presets in OpenAI's layout (SigLIP's are built and compared in test_siglip.py)
CLIP_PRESETS = [n for n in PRESETS if "SigLIP" not in n and n != "tiny-siglip"]


@pytest.mark.parametrize("name", CLIP_PRESETS)
def test_every_preset_builds_and_infers_back_from_its_shapes(name: str) -> None:
    with torch.device("meta"):
        model = CLIP(PRESETS[name])
    inferred = openai.infer_config(openai.to_openai(model.state_dict()))
    expected = PRESETS[name]
    assert inferred.embed_dim == expected.embed_dim
    assert inferred.vision.image_size == expected.vision.image_size
    assert inferred.text.layers == expected.text.layers
    if name in OPENAI_PRESETS:  # OpenAI's conventions hold for its own models
        assert inferred == expected


TINY_PRESETS = [n for n in CLIP_PRESETS if n.startswith(("tiny", "small"))]


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_presets_forward_backward(name: str) -> None:
    model = CLIP(PRESETS[name])
    size = model.image_size
    images = torch.randn(3, 3, size, size)
    tokens = random_tokens(3)
    logits_per_image, logits_per_text = model(images, tokens)
    assert logits_per_image.shape == (3, 3)
    assert torch.equal(logits_per_image, logits_per_text.t())
    loss = torch.nn.functional.cross_entropy(logits_per_image, torch.arange(3))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0


def test_logit_scale_initialised_to_temperature_0_07() -> None:
    model = CLIP(PRESETS["tiny-vit"])
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-6)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize("half_text", [False, True])
def test_parity_with_openai_model_code(kind: str, half_text: bool) -> None:
    """Same weights in OpenAI's clip/model.py and in cliplab give the same features."""
    # OpenAI's code fixes the vision heads at width / 64 (one head for tiny-vit's width 64)
    config = get_config("tiny-vit", vision={"heads": 1}) if kind == "vit" else PRESETS["tiny-rn"]
    ref = refs.perturb_(refs.openai_model_module().CLIP(*openai_args(config)).eval())
    ours = CLIP(config).eval()
    ours.load_state_dict(openai.from_openai(ref.state_dict()))
    images = torch.randn(4, 3, config.vision.image_size, config.vision.image_size)
    # half_text: a shorter context than the model's; positions are sliced as OpenAI does
    tokens = random_tokens(4, context=40 if half_text else 77)
    with torch.no_grad():
        image_err = relative_error(ours.encode_image(images), ref.encode_image(images))
        text_err = relative_error(ours.encode_text(tokens), ref.encode_text(tokens))
        ours_logits = ours(images, tokens)[0]
        ref_logits = ref(images, tokens)[0]
    assert image_err <= 1e-5, image_err
    assert text_err <= 1e-5, text_err
    assert relative_error(ours_logits, ref_logits) <= 1e-5


def test_trim_padding_is_exact() -> None:
    model = CLIP(PRESETS["tiny-vit"]).eval()
    tokens = random_tokens(5)
    tokens[0] = 0  # all rows end early except...
    tokens[0, 0], tokens[0, 1], tokens[0, 2] = 49406, 320, 49407
    with torch.no_grad():
        trimmed = model.encode_text(tokens)
        model.text.length_groups = 0
        full = model.encode_text(tokens)
    assert relative_error(trimmed, full) <= 1e-6


def test_length_groups_are_optimal_and_cover_every_row() -> None:
    import itertools
    import random

    from cliplab.models.text import length_groups

    rng = random.Random(0)
    for trial in range(60):
        lengths = [rng.choice([3, 4, 5, 7, 9, 12, 20, 31]) for _ in range(rng.randint(1, 40))]
        cost, most = rng.choice([0, 8, 64]), rng.randint(1, 4)
        groups = length_groups(lengths, max_groups=most, group_cost=cost)
        rows = sorted(r for members, _ in groups for r in members)
        assert rows == list(range(len(lengths))), "every row exactly once"
        assert 1 <= len(groups) <= most
        for members, n in groups:
            assert n == max(lengths[r] for r in members)  # cut to the group's longest
        found = sum(len(m) * n + cost for m, n in groups)
        # brute force: every way to cut the sorted distinct lengths into <= most runs
        distinct = sorted(set(lengths))
        best = math.inf
        for g in range(1, most + 1):
            for cuts in itertools.combinations(range(1, len(distinct)), g - 1):
                edges = [0, *cuts, len(distinct)]
                total = 0
                for a, b in itertools.pairwise(edges):
                    members = [x for x in lengths if distinct[a] <= x <= distinct[b - 1]]
                    total += len(members) * distinct[b - 1] + cost
                best = min(best, total)
        assert found == best, (trial, lengths, groups)
    assert length_groups([]) == []
    assert length_groups([5] * 10) == [(list(range(10)), 5)]


def test_length_grouped_text_tower_is_exact_with_gradients() -> None:
    """The text tower run in length groups (the default) against one batch cut to its
    longest caption: same features and same gradients, on weights moved off their init."""
    from cliplab.models.text import length_groups

    model = CLIP(PRESETS["tiny-vit"])
    refs.perturb_(model, seed=3)
    context = model.context_length
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(48, context, dtype=torch.long)
    for i in range(48):  # mostly short captions and a few long ones, as in real batches
        n = int(torch.randint(2, 8, (1,), generator=g)) if i % 6 else context - 2
        tokens[i, 0] = 49406
        tokens[i, 1 : n + 1] = torch.randint(1, 49000, (n,), generator=g)
        tokens[i, n + 1] = 49407
    lengths = (tokens.argmax(-1) + 1).tolist()
    assert len(length_groups(lengths)) > 1  # the grouped path is the one tested

    def run(grouped: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        model.text.length_groups = 4 if grouped else 0
        features = model.encode_text(tokens)
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
        return features.detach(), [p.grad.clone() for p in model.text.parameters()]

    grouped, grouped_grads = run(True)
    full, full_grads = run(False)
    assert relative_error(grouped, full) <= 1e-5
    for a, b in zip(grouped_grads, full_grads, strict=True):
        assert relative_error(a, b) <= 1e-4


def test_a_prompt_prefix_the_batch_shares_is_computed_once_and_exactly() -> None:
    """Prompts of one template share the positions before the class name: the tower runs
    them once (a pass of one row) and each row's own positions attend to their keys and
    values. Same features as the untrimmed tower, on weights moved off their init; a row
    that ends early bounds the shared part."""
    model = CLIP(PRESETS["tiny-vit"])
    refs.perturb_(model, seed=4)
    model.eval()
    g = torch.Generator().manual_seed(1)
    template = [49406, 320, 1125, 539, 320, 1400, 539]  # <sot> a photo of a ... of
    rows = []
    for _ in range(400):
        name = torch.randint(1, 49000, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
        rows.append(template + name.tolist() + [49407])
    tokens = torch.zeros(len(rows), model.context_length, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    calls: list[tuple[int, int]] = []
    model.text.transformer.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[:2]))
    with torch.no_grad():
        shared = model.encode_text(tokens)
        assert (1, 7) in calls  # the prefix, once
        assert all(n < 7 or b == 1 for b, n in calls)  # no other pass computes it again
        calls.clear()
        early = tokens.clone()
        early[5, 3:] = 0
        early[5, 3] = 49407  # <sot> a photo <eot>: 3 shared positions at most
        early_shared = model.encode_text(early)
        assert (1, 3) in calls
        model.text.length_groups = 0  # untrimmed, unshared: the plain tower
        full, early_full = model.encode_text(tokens), model.encode_text(early)
    assert relative_error(shared, full) <= 1e-5
    assert relative_error(early_shared, early_full) <= 1e-5


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_parity_with_open_clip(kind: str, activation: str) -> None:
    oc = refs.open_clip()
    if kind == "vit":
        vision_cfg = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
        config = CLIPConfig(
            embed_dim=32,
            vision=ViTConfig(
                image_size=32, patch_size=8, width=64, layers=2, heads=2, activation=activation
            ),
            text=TextConfig(width=64, heads=2, layers=2, activation=activation),
        )
    else:
        vision_cfg = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64}
        config = CLIPConfig(
            embed_dim=32,
            vision=ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=8),
            text=TextConfig(width=64, heads=2, layers=2, activation=activation),
        )
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    ref = oc.model.CLIP(32, vision_cfg, text_cfg, quick_gelu=activation == "quick_gelu").eval()
    refs.perturb_(ref, seed=1)
    ours = CLIP(config).eval()
    ours.load_state_dict(openai.from_openai(ref.state_dict()))
    size = config.vision.image_size
    images = torch.randn(3, 3, size, size)
    tokens = random_tokens(3)
    with torch.no_grad():
        assert relative_error(ours.encode_image(images), ref.encode_image(images)) <= 1e-5
        assert relative_error(ours.encode_text(tokens), ref.encode_text(tokens)) <= 1e-5
        assert float(ours.logit_scale) == float(ref.logit_scale) != math.log(1 / 0.07)


def _features(output: object) -> torch.Tensor:
    """transformers 4 returns a tensor; transformers 5 an output whose pooler_output it is."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_parity_with_transformers_clipmodel(activation: str) -> None:
    tf = refs.transformers()
    hf_config = tf.CLIPConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "hidden_act": activation,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": activation,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    ref = refs.perturb_(tf.CLIPModel(hf_config).eval(), seed=2)
    config = hf.config_from_hf(hf_config.to_dict())
    assert config.text.activation == activation and config.vision.heads == 2
    ours = CLIP(config).eval()
    ours.load_state_dict(hf.from_hf(ref.state_dict()))
    images = torch.randn(3, 3, 32, 32)
    tokens = random_tokens(3)
    with torch.no_grad():
        ref_image = _features(ref.get_image_features(pixel_values=images))
        ref_text = _features(ref.get_text_features(input_ids=tokens))
        assert relative_error(ours.encode_image(images), ref_image) <= 1e-5
        assert relative_error(ours.encode_text(tokens), ref_text) <= 1e-5
    # and back: cliplab -> HF keys reproduce HF's state dict exactly
    back = hf.to_hf(ours.state_dict())
    ref_sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
    assert back.keys() == ref_sd.keys()
    assert all(torch.equal(back[k], ref_sd[k]) for k in ref_sd)


def test_names_and_aliases() -> None:
    assert canonical_name("ViT-B/32") == "ViT-B-32"
    assert canonical_name("vit-l/14@336px") == "ViT-L-14-336"
    assert canonical_name("rn50x4") == "RN50x4"
    with pytest.raises(ValueError, match="unknown model 'ViT-Z/9'"):
        canonical_name("ViT-Z/9")


def test_overrides_and_config_validation() -> None:
    config = get_config("ViT-B/32", activation="gelu", context_length=64, vision={"layers": 3})
    assert config.text.activation == config.vision.activation == "gelu"
    assert config.text.context_length == 64 and config.vision.layers == 3
    assert CLIPConfig.from_dict(config.to_dict()) == config
    rn = get_config("RN50", image_size=256)
    assert CLIPConfig.from_dict(rn.to_dict()) == rn and rn.vision.image_size == 256
    with pytest.raises(ValueError, match="unknown model setting 'depth'"):
        get_config("RN50", depth=3)
    with pytest.raises(ValueError, match="'vision_layers' is now 'vision.layers'"):
        get_config("ViT-B-32", vision_layers=3)
    with pytest.raises(ValueError, match="unknown model setting 'vision.patch_dropout'"):
        get_config("RN50", **{"vision.patch_dropout": 0.5})  # a ViT setting
    dotted = get_config("ViT-B-32", **{"vision.layers": 3, "text.length_groups": 1})
    assert dotted.vision.layers == 3 and dotted.text.length_groups == 1
    with pytest.raises(ValueError, match="multiple of 32"):
        get_config("RN50", image_size=100)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        get_config("ViT-B-32", image_size=100)
    with pytest.raises(ValueError, match="activation must be one of"):
        get_config("tiny-vit", activation="relu")
    with pytest.raises(ValueError, match="vision.kind must be"):
        CLIPConfig.from_dict({"embed_dim": 8, "vision": {"kind": "convnext"}, "text": {}})


def test_bad_inputs_give_clear_errors() -> None:
    model = CLIP(PRESETS["tiny-vit"])
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 3, S, S\) with S a"):
        model.encode_image(torch.randn(2, 3, 36, 36))  # not a multiple of the 8-pixel patch
    with pytest.raises(ValueError, match="images must have shape"):
        model.encode_image(torch.randn(2, 3, 32, 40))
    with pytest.raises(ValueError, match="context length is 77"):
        model.encode_text(torch.zeros(2, 100, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids of shape"):
        model.encode_text(torch.zeros(77, dtype=torch.long))


# -- deliberate bugs -----------------------------------------------------------------------

MODELS = Path(__file__).resolve().parents[1] / "src" / "cliplab" / "models"

#: Four classic bugs, each as an edit of the model source: (file, classes whose instances
#: get the edited code, the line as written, the line with the bug).
BUGS = {
    "swapped ln_1/ln_2": (
        "transformer.py",
        ("ResidualAttentionBlock",),
        "x = x + self.attn(self.ln_1(x), causal=causal, prefix=prefix, keep=keep)\n"
        "        return x + self.mlp(self.ln_2(x))",
        "x = x + self.attn(self.ln_2(x), causal=causal, prefix=prefix, keep=keep)\n"
        "        return x + self.mlp(self.ln_1(x))",
    ),
    "dropped attention bias": (
        "transformer.py",
        ("SelfAttention",),
        "F.linear(x, self.in_proj_weight, self.in_proj_bias)",
        "F.linear(x, self.in_proj_weight)",
    ),
    "pooling at the last token, not EOT": (
        "text.py",
        ("TextTransformer",),
        "return x[torch.arange(B, device=x.device), eot]",
        "return x[:, -1]",
    ),
    "ln_pre skipped": ("vit.py", ("VisionTransformer",), "x = self.ln_pre(x)", "x = x"),
}


def with_bug(model: CLIP, bug: str) -> CLIP:
    """``model`` with the source of one of its classes edited to carry ``bug``: the edited
    file is compiled as a new module and the instances of the classes switch to it."""
    file, classes, right, wrong = BUGS[bug]
    source = (MODELS / file).read_text(encoding="utf-8")
    assert source.count(right) == 1, f"{bug}: the line to break is not in {file}"
    module = types.ModuleType(f"_buggy_{file[:-3]}")
    sys.modules[module.__name__] = module  # dataclasses and typing look modules up by name
    try:
        exec(compile(source.replace(right, wrong), file, "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    for m in model.modules():
        if type(m).__name__ in classes:
            m.__class__ = getattr(module, type(m).__name__)
    return model


def parity_errors(perturbed: bool, bug: str | None = None) -> tuple[float, float]:
    """Relative error of cliplab's image and text features against OpenAI's code."""
    config = get_config("tiny-vit", vision={"heads": 1})
    ref = refs.openai_model_module().CLIP(*openai_args(config)).eval()
    if perturbed:
        refs.perturb_(ref)
    ours = CLIP(config).eval()
    ours.load_state_dict(openai.from_openai(ref.state_dict()))
    if bug is not None:
        with_bug(ours, bug)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = random_tokens(4)
    tokens[0, -1] = 0  # every row has padding after its EOT
    tokens[0, -2] = 49407
    with torch.no_grad():
        return (
            relative_error(ours.encode_image(images), ref.encode_image(images)),
            relative_error(ours.encode_text(tokens), ref.encode_text(tokens)),
        )


def test_parity_harness_passes_the_right_model() -> None:
    assert max(parity_errors(perturbed=True)) <= 1e-5


@pytest.mark.parametrize("bug", list(BUGS))
def test_parity_catches_deliberate_bugs(bug: str) -> None:
    """Each bug moves the features far past the parity tolerance on perturbed weights."""
    assert max(parity_errors(perturbed=True, bug=bug)) > 1e-2, bug


@pytest.mark.parametrize("bug", ["swapped ln_1/ln_2", "dropped attention bias"])
def test_these_bugs_hide_at_initial_weights(bug: str) -> None:
    """Why the parity tests perturb: at initialisation (LayerNorms 1/0, biases 0) these two
    bugs give the reference's features exactly, and a parity test would pass them."""
    assert max(parity_errors(perturbed=False, bug=bug)) <= 1e-5
