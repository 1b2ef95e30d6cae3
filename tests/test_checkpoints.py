"""Checkpoints: every supported format loads to the same features as its own
implementation, conversions are lossless, and bad files fail with clear errors."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import cliplab
import refs
from cliplab.checkpoints import api, openai
from cliplab.checkpoints.errors import CheckpointError
from cliplab.models import CLIP
from cliplab.presets import PRESETS, get_config
from test_models import openai_args, random_tokens, relative_error

# Tiny models within OpenAI's conventions (64-wide heads), so its loader infers them exactly.
VIT = get_config("tiny-vit", vision={"heads": 1}, text={"heads": 1})
RN = get_config("tiny-rn", text={"heads": 1})


def features(model: torch.nn.Module, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, size, size, generator=g)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(random_tokens(3, seed=1))


def assert_same_features(
    ours: torch.nn.Module, ref: torch.nn.Module, size: int, tol: float = 1e-5
) -> None:
    (ours_img, ours_txt), (ref_img, ref_txt) = features(ours, size), features(ref, size)
    assert relative_error(ours_img, ref_img) <= tol
    assert relative_error(ours_txt, ref_txt) <= tol


def openai_reference(config, fp16: bool = False) -> torch.nn.Module:
    module = refs.openai_model_module()
    model = module.CLIP(*openai_args(config)).eval()
    if fp16:
        module.convert_weights(model)
    return model


def trained_model(config) -> CLIP:
    """A model whose BatchNorm statistics and weights are not at their init values."""
    model = CLIP(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def assert_same_weights(a: CLIP, b: CLIP) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# -- cliplab's own format ------------------------------------------------------------------


@pytest.mark.parametrize("config", [VIT, RN], ids=["vit", "resnet"])
@pytest.mark.parametrize("target", ["dir", "model.safetensors"])
def test_save_load_round_trip(tmp_path: Path, config, target: str) -> None:
    model = trained_model(config)
    path = cliplab.save(model, tmp_path / target)
    loaded, preprocess = cliplab.load(path)
    assert loaded.config == model.config
    assert_same_weights(loaded, model)
    assert not loaded.training
    assert preprocess.image_size == config.vision.image_size
    # no pickle in cliplab's format
    files = [path] if path.is_file() else list(path.iterdir())
    assert all(not f.name.endswith((".pt", ".bin", ".pkl")) for f in files)


def test_load_with_dtype_and_overrides(tmp_path: Path) -> None:
    model = trained_model(VIT)
    path = cliplab.save(model, tmp_path / "m")
    half, _ = cliplab.load(path, dtype=torch.bfloat16)
    assert half.logit_scale.dtype == torch.bfloat16
    gelu, _ = cliplab.load(path, activation="gelu")
    assert gelu.config.text.activation == "gelu"
    with pytest.raises(CheckpointError, match="missing keys"):
        cliplab.load(path, text={"layers": 3})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        cliplab.load(path, text={"width": 128, "heads": 2})


# -- OpenAI --------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [VIT, RN], ids=["vit", "resnet"])
def test_openai_state_dict_fp16(tmp_path: Path, config) -> None:
    """OpenAI's released state dicts hold fp16 weights and metadata entries."""
    ref = openai_reference(config, fp16=True)
    sd = ref.state_dict()
    sd["input_resolution"] = torch.tensor(config.vision.image_size)
    sd["context_length"] = torch.tensor(77)
    sd["vocab_size"] = torch.tensor(49408)
    torch.save(sd, tmp_path / "openai.pt")
    ours, _ = cliplab.load(tmp_path / "openai.pt")
    assert ours.config == config
    assert ours.logit_scale.dtype == torch.float32
    assert_same_features(ours, ref.float(), config.vision.image_size)


@pytest.mark.parametrize("config", [VIT, RN], ids=["vit", "resnet"])
def test_openai_torchscript_archive(tmp_path: Path, config) -> None:
    """Archives made as OpenAI made theirs (traced, fp16) load without running TorchScript."""
    ref = openai_reference(config, fp16=False)
    for name, value in (
        ("input_resolution", config.vision.image_size),
        ("context_length", 77),
        ("vocab_size", 49408),
    ):
        if hasattr(ref, name):  # plain int attributes in OpenAI's code, buffers in its archives
            delattr(ref, name)
        ref.register_buffer(name, torch.tensor(value))
    size = config.vision.image_size
    image, text = torch.randn(1, 3, size, size), random_tokens(1)
    traced = torch.jit.trace_module(
        ref, {"forward": (image, text), "encode_image": image, "encode_text": text}
    )
    path = tmp_path / "archive.pt"
    torch.jit.save(traced, str(path))
    ours, _ = cliplab.load(path)
    assert ours.config == config
    assert_same_features(ours, ref, size)


def test_openai_export_is_read_by_openai_code(tmp_path: Path) -> None:
    model = trained_model(RN)
    path = api.export_openai(model, tmp_path / "rn.pt")
    sd = torch.load(path, weights_only=True)
    ref = openai_reference(RN)
    ref.load_state_dict(sd)  # exact key/shape match with OpenAI's model
    assert_same_features(model, ref, 64)
    # OpenAI's own loader (clip.load) reads it too; it rounds weights through fp16 on the way
    clip_model, _ = refs.openai_clip().load(str(path), device="cpu", jit=False)
    assert_same_features(model, clip_model, 64, tol=2e-2)


def test_openai_export_warns_about_what_openai_cannot_express(tmp_path: Path) -> None:
    model = CLIP(PRESETS["tiny-vit"].replace(activation="gelu"))
    with pytest.warns(UserWarning, match="QuickGELU"):
        api.export_openai(model, tmp_path / "gelu.pt")


# -- OpenCLIP ------------------------------------------------------------------------------


def test_open_clip_training_checkpoint_with_gelu(tmp_path: Path) -> None:
    oc = refs.open_clip()
    vision_cfg = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8}
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}
    ref = oc.model.CLIP(32, vision_cfg, text_cfg, quick_gelu=False).eval()
    optimizer = torch.optim.AdamW(ref.parameters())
    ref(torch.randn(2, 3, 32, 32), random_tokens(2))[0].sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 3,
        "name": "run",
        "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()},
        "optimizer": optimizer.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "epoch_3.pt")
    ours, _ = cliplab.load(tmp_path / "epoch_3.pt", activation="gelu")
    assert_same_features(ours, ref, 32)
    # without the override the file says nothing about GELU, and features differ
    wrong, _ = cliplab.load(tmp_path / "epoch_3.pt")
    assert wrong.config.text.activation == "quick_gelu"
    assert relative_error(features(wrong, 32)[1], features(ref, 32)[1]) > 1e-3


def test_open_clip_hub_directory(tmp_path: Path) -> None:
    """open_clip_config.json says whether the model uses QuickGELU."""
    from safetensors.torch import save_file

    oc = refs.open_clip()
    vision_cfg = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}
    ref = oc.model.CLIP(32, vision_cfg, text_cfg, quick_gelu=False).eval()
    save_file(
        {k: v.contiguous() for k, v in ref.state_dict().items()},
        str(tmp_path / "open_clip_model.safetensors"),
    )
    config = {
        "model_cfg": {"embed_dim": 32, "vision_cfg": vision_cfg, "text_cfg": text_cfg},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    ours, preprocess = cliplab.load(tmp_path)
    assert ours.config.text.activation == "gelu"
    assert_same_features(ours, ref, 64)
    assert tuple(preprocess.mean) == (0.5, 0.5, 0.5)


# -- Hugging Face --------------------------------------------------------------------------


def hf_reference(tmp_path: Path):
    tf = refs.transformers()
    config = tf.CLIPConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
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
        },
        projection_dim=32,
    )
    return tf.CLIPModel(config).eval()


class HFFeatures(torch.nn.Module):
    """transformers' CLIPModel behind cliplab's encode_image/encode_text names."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=images)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model.get_text_features(input_ids=tokens)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_hf_directory_safetensors_and_bin(tmp_path: Path) -> None:
    ref = hf_reference(tmp_path)
    ref.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").exists()
    ours, _ = cliplab.load(tmp_path / "hf")
    assert_same_features(ours, HFFeatures(ref), 32)
    # the older pytorch_model.bin layout
    bin_dir = tmp_path / "hf_bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(ref.state_dict(), bin_dir / "pytorch_model.bin")
    ours_bin, _ = cliplab.load(bin_dir)
    assert_same_weights(ours_bin, ours)


def test_convert_to_hf_gives_same_features_in_transformers(tmp_path: Path) -> None:
    tf = refs.transformers()
    model = trained_model(PRESETS["tiny-vit"].replace(activation="gelu"))
    cliplab.save(model, tmp_path / "ours")
    api.convert(tmp_path / "ours", tmp_path / "hf", to="hf")
    exported = tf.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    assert_same_features(model, HFFeatures(exported), 32, tol=1e-5)
    # HF's tokenizer reads the exported vocabulary and agrees with cliplab's ids
    tokenizer = tf.CLIPTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["a photo of a cat.", "Two DOGS playing in the snow!", "caf\u00e9 \u2014 3 bikes"]
    hf_ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    ours_ids = cliplab.tokenize(texts)
    for ours_row, hf_row in zip(ours_ids, hf_ids):
        n = int(ours_row.argmax()) + 1
        assert ours_row[:n].tolist() == hf_row[:n].tolist()


@pytest.mark.parametrize("config", [VIT, RN], ids=["vit", "resnet"])
def test_conversions_are_lossless(tmp_path: Path, config) -> None:
    model = trained_model(config)
    cliplab.save(model, tmp_path / "a")
    api.convert(tmp_path / "a", tmp_path / "b.pt", to="openai")
    api.convert(tmp_path / "b.pt", tmp_path / "c.safetensors", to="cliplab")
    chain = tmp_path / "c.safetensors"
    if config is VIT:  # HF has no ResNet image tower
        api.convert(chain, tmp_path / "d", to="hf")
        api.convert(tmp_path / "d", tmp_path / "e", to="cliplab")
        chain = tmp_path / "e"
    back, _ = cliplab.load(chain)
    assert_same_weights(back, model)


def test_convert_resnet_to_hf_is_refused(tmp_path: Path) -> None:
    cliplab.save(CLIP(RN), tmp_path / "rn")
    with pytest.raises(CheckpointError, match="no ResNet image tower"):
        api.convert(tmp_path / "rn", tmp_path / "hf", to="hf")


# -- the CLI -------------------------------------------------------------------------------


def test_cli_convert_and_list_models(tmp_path: Path, capsys) -> None:
    from cliplab.cli import main

    ref = openai_reference(VIT, fp16=True)
    torch.save(ref.state_dict(), tmp_path / "openai.pt")
    src, out = str(tmp_path / "openai.pt"), str(tmp_path / "out")
    assert main(["convert", "--model", src, "--out", out, "--to", "cliplab"]) == 0
    assert "wrote cliplab checkpoint" in capsys.readouterr().out
    loaded, _ = cliplab.load(tmp_path / "out")
    assert_same_features(loaded, ref.float(), 32)
    assert (
        main(["convert", "--model", src, "--out", str(tmp_path / "g"), "--set", "activation=gelu"])
        == 0
    )
    assert cliplab.load(tmp_path / "g")[0].config.text.activation == "gelu"
    missing = ["convert", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]
    assert main(missing) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "ViT-L-14-336" in out and "151,277,313" in out
    assert main(["list-models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["parameters"] for r in rows}["RN50"] == 102_007_137


# -- bad files -----------------------------------------------------------------------------


class _Exploit:
    """Unpickling this would create a file: proof of code execution if it ever happens."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bad_files_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        cliplab.load(tmp_path / "empty.pt")
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        cliplab.load(tmp_path / "noise.bin")
    # truncated safetensors and truncated torch.save zip
    good = cliplab.save(CLIP(VIT), tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        cliplab.load(tmp_path / "cut.safetensors")
    torch.save(CLIP(VIT).state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        cliplab.load(tmp_path / "cut.pt")
    # a pickle that would run code: refused, and nothing ran
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(1), "evil": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        cliplab.load(tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError):
        cliplab.load(tmp_path / "evil.pkl")
    assert not marker.exists()
    # a zip that is neither torch.save nor TorchScript
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("readme.txt", "hello")
    (tmp_path / "other.zip").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError):
        cliplab.load(tmp_path / "other.zip")
    # tensors that are not CLIP
    torch.save(
        {
            "conv.weight": torch.zeros(3, 3),
            "fc.weight": torch.zeros(2),
            "a": torch.zeros(1),
            "b": torch.zeros(1),
        },
        tmp_path / "other.pt",
    )
    with pytest.raises(CheckpointError, match="unrecognised weights"):
        cliplab.load(tmp_path / "other.pt")


def test_bad_directories_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="needs config.json"):
        cliplab.load(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(CheckpointError, match="neither a cliplab config"):
        cliplab.load(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointError, match="no weights file"):
        cliplab.load(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        cliplab.load(tmp_path / "d")


def test_openai_files_in_openais_cache_are_used_once_verified(tmp_path: Path, monkeypatch) -> None:
    """A registry entry of OpenAI's layout is taken from ~/.cache/clip (where OpenAI's
    clip.load keeps its downloads) when its SHA-256 matches: no connection at all."""
    import hashlib

    from cliplab.checkpoints.fetch import FetchError

    ref = openai_reference(VIT, fp16=True)
    data_path = tmp_path / "xdg" / "clip" / "tiny.pt"
    data_path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), data_path)
    sha = hashlib.sha256(data_path.read_bytes()).hexdigest()
    registry = tmp_path / "registry.toml"
    registry.write_text(
        '[pretrained."tiny/openai"]\nurl = "https://127.0.0.1:9/clip/tiny.pt"\n'
        f'sha256 = "{sha}"\nlayout = "openai"\n'
    )
    monkeypatch.setenv("CLIPLAB_REGISTRY", str(registry))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLIPLAB_OFFLINE", "1")
    model, _ = cliplab.load("tiny/openai")
    assert model.config == VIT
    assert_same_features(model, ref.float(), 32)
    data_path.write_bytes(data_path.read_bytes()[:-10])  # a half-written file is never used
    with pytest.raises(FetchError, match="offline .* not cached"):
        cliplab.load("tiny/openai")


# -- OpenCLIP's hub layout, written -----------------------------------------------------------


def test_convert_to_open_clip_is_read_by_open_clip(tmp_path: Path) -> None:
    """cliplab convert --to open_clip writes OpenCLIP's hub folder; OpenCLIP's own loader
    (local-dir:) builds the same model from it, on perturbed weights."""
    oc = refs.open_clip()
    for config, activation in ((VIT, "quick_gelu"), (VIT.replace(activation="gelu"), "gelu")):
        model = CLIP(config).eval()
        refs.perturb_(model, seed=5)
        cliplab.save(model, tmp_path / activation)
        api.convert(tmp_path / activation, tmp_path / f"oc-{activation}", to="open_clip")
        theirs = oc.create_model(f"local-dir:{tmp_path / f'oc-{activation}'}").eval()
        assert_same_features(theirs, model, 32)
        back, _ = cliplab.load(tmp_path / f"oc-{activation}")
        assert back.config == model.config
        assert_same_weights(back, model)


@pytest.mark.parametrize("config", [VIT, RN], ids=["vit", "resnet"])
def test_every_format_round_trips_through_every_other(tmp_path: Path, config) -> None:
    """cliplab -> OpenAI -> OpenCLIP -> Hugging Face -> cliplab (ResNets skip Hugging Face,
    which has no ResNet tower): the weights come back bit for bit."""
    model = trained_model(config)
    cliplab.save(model, tmp_path / "a")
    api.convert(tmp_path / "a", tmp_path / "b.pt", to="openai")
    api.convert(tmp_path / "b.pt", tmp_path / "c", to="open_clip")
    chain = tmp_path / "c"
    if config is VIT:
        api.convert(chain, tmp_path / "d", to="hf")
        api.convert(tmp_path / "d", tmp_path / "e", to="open_clip")
        chain = tmp_path / "e"
    api.convert(chain, tmp_path / "f.safetensors", to="cliplab")
    back, _ = cliplab.load(tmp_path / "f.safetensors")
    assert back.config == model.config
    assert_same_weights(back, model)


def test_infer_config_rejects_non_clip_state_dicts() -> None:
    with pytest.raises(CheckpointError, match="missing key 'text_projection'"):
        openai.infer_config({"visual.proj": torch.zeros(2, 2)})
