"""Fast inference runtimes (``cliplab.runtime``) and ``cliplab export``: each runtime's
features against the float32 torch model on perturbed weights, ONNX parity within 1e-4,
int8 within cosine 0.99, the fingerprint kept and the feature-cache key not, and the
``--runtime`` option of classify / eval / embed end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cliplab
import refs
from cliplab.cli import main
from cliplab.data.evalsets import write_classification_set
from cliplab.encode import FeatureStore, model_fingerprint, unwrap_model
from cliplab.runtime import FastCLIP, OnnxCLIP, accelerate, cpu_has_bf16, resolve_runtime

CAPTIONS = ["a photo of a dog", "a red car parked on a street at night " * 3, "", "🙂 émoji"]


@pytest.fixture(scope="module")
def model() -> cliplab.CLIP:
    torch.manual_seed(0)
    return refs.perturb_(cliplab.create_model("tiny-vit"), seed=5).eval()


def _inputs(model: cliplab.CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, model.image_size, model.image_size, generator=g)
    return images, cliplab.tokenize(CAPTIONS)


def _worst(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    rel = float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max())
    return rel, float(F.cosine_similarity(ours, ref).min())


@pytest.mark.parametrize(
    "runtime,max_rel,min_cos",
    [
        ("onnx", 1e-4, 0.99999),
        ("bf16", 0.05, 0.99),
        ("bf16-compile", 0.05, 0.99),
        ("int8", 0.2, 0.99),
        ("onnx-int8", 0.2, 0.99),
    ],
)
def test_runtime_features_match_float32(model, tmp_path, runtime, max_rel, min_cos) -> None:
    fast = accelerate(model, runtime, cache_dir=tmp_path)
    assert isinstance(fast, FastCLIP) and fast.runtime == runtime
    images, tokens = _inputs(model)
    with torch.no_grad():
        pairs = [
            (fast.encode_image(images), model.encode_image(images)),
            (fast.encode_text(tokens), model.encode_text(tokens)),
        ]
    for ours, ref in pairs:
        assert ours.dtype == torch.float32
        rel, cos = _worst(ours, ref)
        assert rel < max_rel and cos > min_cos, (runtime, rel, cos)
    if runtime != "onnx":
        assert _worst(*pairs[0])[0] > 0  # really another computation, not the same one
    assert unwrap_model(fast) is model
    assert model_fingerprint(fast) == model_fingerprint(model)
    store_key = FeatureStore(fast).model_key
    assert store_key != FeatureStore(model).model_key and store_key.endswith(runtime)


def test_onnx_export_is_cached_by_fingerprint(model, tmp_path) -> None:
    accelerate(model, "onnx", cache_dir=tmp_path)
    exports = list((tmp_path / "onnx").iterdir())
    stamp = (exports[0] / "image.onnx").stat().st_mtime_ns
    accelerate(model, "onnx", cache_dir=tmp_path)
    assert list((tmp_path / "onnx").iterdir()) == exports
    assert (exports[0] / "image.onnx").stat().st_mtime_ns == stamp  # not exported again
    other = refs.perturb_(cliplab.create_model("tiny-vit"), seed=6)
    accelerate(other, "onnx", cache_dir=tmp_path)
    assert len(list((tmp_path / "onnx").iterdir())) == 2  # other weights, other export


def test_resolve_runtime() -> None:
    assert resolve_runtime("auto", "cpu") == ("bf16" if cpu_has_bf16() else "onnx-int8")
    assert resolve_runtime("auto", "cuda") == "torch"
    assert resolve_runtime("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="runtime must be one of"):
        resolve_runtime("fast", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_runtime("onnx", "cuda")


def test_resnet_runs_on_onnx_and_int8(tmp_path) -> None:
    torch.manual_seed(0)
    rn = refs.perturb_(cliplab.create_model("tiny-rn"), seed=7).eval()
    images = torch.randn(2, 3, rn.image_size, rn.image_size)
    with torch.no_grad():
        ref = rn.encode_image(images)
    for runtime, max_rel in (("onnx", 1e-4), ("int8", 0.2)):
        got = accelerate(rn, runtime, cache_dir=tmp_path).encode_image(images)
        assert _worst(got, ref)[0] < max_rel, runtime


# -- the command line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    cliplab.save(model, path)
    return path


def test_export_command_writes_checked_onnx_models(saved, model, tmp_path, capsys) -> None:
    for flags, tolerance in (([], 1e-4), (["--int8"], 0.2)):
        out = tmp_path / f"onnx{len(flags)}"
        assert (
            main(["export", "--model", str(saved), "--to", "onnx", "--out", str(out), *flags]) == 0
        )
        assert "against torch: image max relative error" in capsys.readouterr().out
        info = json.loads((out / "onnx.json").read_text())
        assert info["int8"] == bool(flags) and info["fingerprint"] == model_fingerprint(model)
        images, tokens = _inputs(model)
        onnx = OnnxCLIP(out)
        with torch.no_grad():
            assert _worst(onnx.encode_image(images), model.encode_image(images))[0] < tolerance
            assert _worst(onnx.encode_text(tokens), model.encode_text(tokens))[0] < tolerance
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(ValueError, match="not an ONNX export"):
        OnnxCLIP(tmp_path)


def test_classify_eval_and_embed_take_the_runtime(saved, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CLIPLAB_CACHE", str(tmp_path / "cache"))
    images = []
    for i, color in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        images.append(tmp_path / "pics" / f"{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 40), color).save(images[-1])
    probabilities = {}
    for runtime in ("torch", "onnx", "bf16"):
        argv = ["classify", *map(str, images), "--labels", "red,green,blue", "--json"]
        assert main([*argv, "--model", str(saved), "--runtime", runtime]) == 0
        rows = json.loads(capsys.readouterr().out)
        probabilities[runtime] = [dict(r["top"]) for r in rows]
    for runtime in ("onnx", "bf16"):
        for ours, ref in zip(probabilities[runtime], probabilities["torch"]):
            assert max(abs(ours[k] - ref[k]) for k in ref) < (1e-4 if runtime == "onnx" else 0.02)
    dataset = tmp_path / "colors"
    items = [(Image.open(path).convert("RGB"), i) for i, path in enumerate(images)]
    names = ["red", "green", "blue"]
    write_classification_set(dataset, items, name="colors", classnames=names, templates=["{}"])
    for runtime in ("torch", "int8"):
        argv = ["eval", "zeroshot", "--model", str(saved), "--dataset", str(dataset)]
        argv += ["--out", str(tmp_path / runtime), "--no-cache", "--quiet", "--runtime", runtime]
        assert main(argv) == 0
    top1 = {
        r: json.loads((tmp_path / r / "zeroshot-colors.json").read_text())
        for r in ("torch", "int8")
    }
    assert top1["int8"]["confusion"] == top1["torch"]["confusion"]  # the same predictions
    out = tmp_path / "embedded"
    argv = ["embed", str(tmp_path / "pics"), "--model", str(saved), "--out", str(out)]
    assert main([*argv, "--runtime", "int8"]) == 0
    assert json.loads((out / "embed.json").read_text())["runtime"] == "int8"
    capsys.readouterr()
    assert main([*argv, "--runtime", "onnx"]) == 2  # a collection keeps its runtime
    assert "different runtime" in capsys.readouterr().err


def test_auto_measures_once_per_architecture_and_remembers(tmp_path, monkeypatch) -> None:
    """``auto`` on a CPU times each candidate runtime for this model's architecture, picks
    the fastest, and reads the choice back from its cache without timing again; another
    architecture is measured afresh."""
    from cliplab import runtime

    model = cliplab.create_model("tiny-vit").eval()
    calls = []
    real = runtime.measure_runtimes

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "measure_runtimes", counted)
    choice = runtime.resolve_runtime("auto", "cpu", model, tmp_path)
    assert choice in runtime.auto_candidates() and calls == [1]
    record = json.loads((tmp_path / "runtime-auto.json").read_text())
    (entry,) = record.values()
    assert set(entry["images_per_s"]) == set(runtime.auto_candidates())
    assert entry["choice"] == max(entry["images_per_s"], key=entry["images_per_s"].get)
    assert runtime.accelerate(model, "auto", cache_dir=tmp_path) is not None
    assert runtime.resolve_runtime("auto", "cpu", model, tmp_path) == choice and calls == [1]
    wider = cliplab.create_model("tiny-vit", embed_dim=48).eval()
    runtime.resolve_runtime("auto", "cpu", wider, tmp_path)
    assert calls == [1, 1] and len(json.loads((tmp_path / "runtime-auto.json").read_text())) == 2


_FAULTS = """
import resource, sys, torch
from cliplab.runtime import reuse_freed_memory
took = reuse_freed_memory() if sys.argv[1] == "reuse" else False
x = torch.empty(0)
for i in range(30):  # 40 MB made, used and freed, as a layer's activation batch after batch
    if i == 10:  # the heap has grown to its working size
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del x
    x = torch.empty(10 * 2**20).fill_(1.0)
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_activations_are_reused_instead_of_faulted_in_again(tmp_path) -> None:
    """``reuse_freed_memory`` (the command line's first step): 40 MB allocated, filled and
    freed 20 times page-faults its memory in 20 times with glibc's defaults (a fresh ``mmap``
    each time), hardly at all with freed blocks kept; and the setting stays off where the
    user tuned malloc."""
    import os
    import subprocess
    import sys

    script = tmp_path / "faults.py"
    script.write_text(_FAULTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for name in ("CLIPLAB_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD"):  # a tuned malloc opts out
        env.pop(name, None)

    def run(setting: str, **extra: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, str(script), setting], env={**env, **extra},
                             check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
        return out[0], int(out[1])

    took, reused = run("reuse")
    _, default = run("default")
    assert took == "True"
    assert default > 20 * 9000  # ~10,240 pages of 4 KiB per 40 MB allocation
    assert reused < default / 8
    assert run("reuse", CLIPLAB_MALLOC="system")[0] == "False"
    assert run("reuse", MALLOC_MMAP_THRESHOLD_="65536")[0] == "False"
