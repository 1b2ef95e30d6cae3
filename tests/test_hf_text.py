"""OpenCLIP's models with a Hugging Face text tower (``xlm-roberta-base-ViT-B-32``...): the
tower built by transformers from the config the checkpoint carries, OpenCLIP's poolers and
projections, its tokenizer (OpenCLIP's cleaning + XLM-R's tokenizer.json), on a tiny
perturbed XLM-R. No download: OpenCLIP reads the same local config directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cliplab
import refs
import test_models
from test_models import relative_error, with_bug

TOL = 1e-4
VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
TEXTS = [
    "a photo of a cat.",
    "",
    "  ",
    "<pad> </s>",
    "東京タワー 😀",
    "x" * 400,
    "Ça va? naïve café",
    "une photo d'un chat " * 30,  # truncated, keeping </s>
    "&amp;lt;b&amp;gt; \x00 tab\there",  # OpenCLIP's cleaning: HTML unescaped, spaces
]
CORPUS = ["a photo of a cat", "une photo d'un chat", "ein Foto einer Katze", "東京 タワー"] * 10


def xlmr_files(directory: Path) -> None:
    """A tiny XLM-R config and tokenizer (Unigram, trained here), written by transformers."""
    tf = refs.transformers()
    from tokenizers import SentencePieceUnigramTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    config = tf.XLMRobertaConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=80,
        type_vocab_size=1,
        pad_token_id=1,
    )
    config.save_pretrained(directory)
    trained = SentencePieceUnigramTokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trained.train_from_iterator(CORPUS, vocab_size=150, special_tokens=specials, unk_token="<unk>")
    vocab = json.loads(trained.to_str())["model"]["vocab"]
    tokenizer = tf.XLMRobertaTokenizer(vocab=[tuple(v) for v in vocab] + [("<mask>", 0.0)])
    tokenizer.save_pretrained(directory)


def reference(tmp_path: Path, pooler: str, proj: str):
    """OpenCLIP's CustomTextCLIP with the tiny XLM-R tower (perturbed) and a hub directory
    of it: open_clip_config.json, weights, the text tower's files under xlm-roberta-base/."""
    from safetensors.torch import save_file

    oc = refs.open_clip()
    text_dir = tmp_path / "hub" / "xlm-roberta-base"
    xlmr_files(text_dir)
    text_cfg = {"hf_model_name": str(text_dir), "hf_model_pretrained": False}
    text_cfg |= {"hf_pooler_type": pooler, "hf_proj_type": proj, "hf_tokenizer_name": "local"}
    torch.manual_seed(0)
    ref = oc.model.CustomTextCLIP(32, VISION, text_cfg).eval()
    refs.perturb_(ref, seed=6)
    hub = tmp_path / "hub"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(hub / "open_clip_model.safetensors"))
    model_cfg = {"embed_dim": 32, "custom_text": True, "vision_cfg": VISION}
    model_cfg["text_cfg"] = {**text_cfg, "hf_model_name": "xlm-roberta-base"}
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return ref, hub, text_dir


def tokens(seed: int = 2) -> torch.Tensor:
    """XLM-R ids: <s>, random pieces, </s>, padding (1) to 77."""
    g = torch.Generator().manual_seed(seed)
    out = torch.ones(4, 77, dtype=torch.long)
    for i, n in enumerate((5, 20, 75, 1)):
        out[i, 0], out[i, n + 1] = 0, 2
        out[i, 1 : n + 1] = torch.randint(4, 300, (n,), generator=g)
    return out


def errors(ours, ref) -> tuple[float, float, float]:
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    text = tokens()
    with torch.no_grad():
        return (
            relative_error(ours.encode_image(images), ref.encode_image(images)),
            relative_error(ours.encode_text(text), ref.encode_text(text)),
            relative_error(ours(images, text)[0], ref.get_logits(images, text)[0]),
        )


@pytest.mark.parametrize(
    "pooler,proj",
    [("mean_pooler", "mlp"), ("cls_pooler", "linear"), ("cls_last_hidden_state_pooler", "mlp")],
)
def test_parity_with_open_clip_hf_text_tower(tmp_path: Path, pooler: str, proj: str) -> None:
    ref, hub, _ = reference(tmp_path, pooler, proj)
    ours, _ = cliplab.load(hub)
    assert ours.config.text.kind == "hf" and ours.config.text.pooler == pooler
    found = errors(ours, ref)
    assert max(found) <= TOL, found


def test_tokenizer_save_and_load_round_trip(tmp_path: Path) -> None:
    ref, hub, text_dir = reference(tmp_path, "mean_pooler", "mlp")
    ours, _ = cliplab.load(hub)
    oc = refs.open_clip()
    expected = oc.tokenizer.HFTokenizer(str(text_dir), context_length=77, clean="whitespace")
    assert cliplab.get_tokenizer(ours)(TEXTS).tolist() == expected(TEXTS).tolist()
    saved = cliplab.save(ours, tmp_path / "saved")
    again, _ = cliplab.load(saved)
    assert again.config == ours.config
    assert max(errors(again, ref)) <= TOL
    assert torch.equal(cliplab.get_tokenizer(again)(TEXTS), cliplab.get_tokenizer(ours)(TEXTS))


def test_parity_catches_padding_in_the_mean(tmp_path: Path, monkeypatch) -> None:
    bug = "padding in the mean"
    edit = (
        "hf_text.py",
        ("HFTextEncoder",),
        "pooled = hidden.sum(dim=1) / mask.sum(-1, keepdim=True)  # (B, width)",
        "pooled = out.last_hidden_state.mean(dim=1)",
    )
    monkeypatch.setitem(test_models.BUGS, bug, edit)
    ref, hub, _ = reference(tmp_path, "mean_pooler", "mlp")
    ours, _ = cliplab.load(hub)
    found = errors(with_bug(ours, bug), ref)
    assert max(found) > 1e-2, found


def test_missing_text_config_fails_clearly(tmp_path: Path) -> None:
    _, hub, text_dir = reference(tmp_path, "mean_pooler", "mlp")
    (text_dir / "config.json").unlink()
    with pytest.raises(cliplab.CheckpointError, match="config.json is not here"):
        cliplab.load(hub)
