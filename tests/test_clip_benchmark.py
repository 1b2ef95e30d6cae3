"""The same numbers as CLIP_benchmark: for the same weights and the same data, cliplab's
zero-shot top-1/top-5 and mean per-class recall, and its retrieval recall@1/5/10 in both
directions, equal those of the ``clip-benchmark`` package (LAION's CLIP_benchmark, run here
on OpenCLIP with the same perturbed weights), on sets written in CLIP_benchmark's own
WebDataset layout and read by both, and on an ImageFolder tree and a CSV table of the same
images read by cliplab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import refs
from cliplab.cli import main
from layouts import (
    CLASSES,
    picture,
    samples,
    write_imagefolder,
    write_table,
    write_wds,
    write_wds_retrieval,
)
from test_openclip_variants import BASE_TEXT, BASE_VISION, hub_directory

TOL = 1e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """OpenCLIP's tiny CLIP with perturbed weights, and the same weights as a hub folder."""
    oc = refs.open_clip()
    model_cfg = {"embed_dim": 32, "vision_cfg": {**BASE_VISION}, "text_cfg": {**BASE_TEXT}}
    torch.manual_seed(0)
    ref = refs.perturb_(oc.model.CLIP(**model_cfg).eval(), seed=11)
    return ref, hub_directory(tmp_path_factory.mktemp("hub"), ref, model_cfg)


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """CLIP_benchmark 1.6.2's ``accuracy``, line for line, but for its last step: it turns a
    one-element array into a float, which NumPy 2.4 refuses; ``.item()`` takes the same
    value."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).item()) / n for k in topk]


def clip_benchmark() -> tuple:
    refs.open_clip()  # the torchvision shim first
    try:
        from clip_benchmark.datasets.builder import build_dataset
        from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
    except ImportError:
        refs.missing("clip-benchmark (and webdataset)")
    zeroshot_classification.accuracy = _accuracy
    return build_dataset, zeroshot_classification, zeroshot_retrieval


def reference(ref: torch.nn.Module, root: Path, task: str, batch_size: int = 16) -> dict:
    """CLIP_benchmark's own evaluation of ``root`` (its WebDataset layout), as its CLI runs
    it (``clip_benchmark eval --dataset wds/... --no_amp``) on the CPU."""
    build_dataset, zsc, zsr = clip_benchmark()
    oc = refs.open_clip()
    transform = oc.image_transform(BASE_VISION["image_size"], is_train=False)
    tokenizer = oc.get_tokenizer("ViT-B-32")  # OpenAI's BPE, context 77: the tiny model's
    dataset = build_dataset(dataset_name=f"wds/{root.name}", root=str(root), transform=transform,
                            split="test", task=task)  # fmt: skip
    loader = torch.utils.data.DataLoader(
        dataset.batched(batch_size), batch_size=None, shuffle=False
    )
    if task == "zeroshot_classification":
        return zsc.evaluate(ref, loader, tokenizer, dataset.classes, dataset.templates,
                            device="cpu", amp=False)  # fmt: skip
    return zsr.evaluate(ref, loader, tokenizer, recall_k_list=[1, 5, 10], device="cpu", amp=False)


def ours(hub: Path, protocol: str, dataset: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", protocol, "--model", str(hub), "--dataset", str(dataset),
                 "--out", str(out), "--cache-dir", str(out / "cache"), *extra]) == 0  # fmt: skip
    (found,) = out.glob(f"{protocol}-*.json")
    return json.loads(found.read_text())


def test_zero_shot_equals_clip_benchmark(weights, tmp_path: Path) -> None:
    ref, hub = weights
    items = samples(60, seed=3)
    templates = ["a photo of a {c}.", "a blurry photo of a {c}.", "art of the {c}."]
    wds = write_wds(tmp_path / "mini", items, shard_size=16, templates=templates)
    theirs = reference(ref, wds, "zeroshot_classification")
    mine = ours(hub, "zeroshot", wds, tmp_path / "out", "--ties", "topk")
    assert mine["top1"] == pytest.approx(theirs["acc1"], abs=TOL)
    assert mine["top5"] == pytest.approx(theirs["acc5"], abs=TOL)
    assert mine["mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=TOL)
    assert 0.05 < theirs["acc1"] < 0.95  # a test that could fail: neither all right nor all wrong
    # the same images as an ImageFolder tree and a CSV table: the same numbers
    (tmp_path / "tree").mkdir()
    tree = write_imagefolder(tmp_path / "tree" / "mini", items)
    (tree / "templates.txt").write_text("\n".join(templates))
    table = write_table(tmp_path / "csv" / "mini.csv", items, names=True)
    (tmp_path / "csv" / "templates.txt").write_text("\n".join(templates))
    for name, path in (("tree", tree), ("csv", table)):
        again = ours(hub, "zeroshot", path, tmp_path / f"out-{name}", "--ties", "topk")
        if name == "csv":  # same order as the shards: the same confusion matrix too
            assert again["confusion"] == mine["confusion"]
        for key in ("top1", "top5", "mean_per_class_recall"):
            assert again[key] == pytest.approx(mine[key], abs=TOL), (name, key)


def test_retrieval_equals_clip_benchmark(weights, tmp_path: Path) -> None:
    ref, hub = weights
    items = [
        (picture(i % 10, 500 + i), [f"a photo of a {CLASSES[i % 10]}", f"{CLASSES[(i * 7) % 10]} number {i}"])
        for i in range(40)
    ]  # fmt: skip
    wds = write_wds_retrieval(tmp_path / "flickr_mini", items)
    theirs = reference(ref, wds, "zeroshot_retrieval")
    # four images share each "a photo of a <class>" caption: their scores tie exactly, and
    # the tie rule decides. Ours by default counts a tie against the model; --ties topk is
    # CLIP_benchmark's (torch.topk breaks the tie) and gives its numbers
    strict = ours(hub, "retrieval", wds, tmp_path / "strict")
    mine = ours(hub, "retrieval", wds, tmp_path / "out", "--ties", "topk")
    assert any(strict["recall"][k] < mine["recall"][k] for k in strict["recall"])
    assert all(strict["recall"][k] <= mine["recall"][k] for k in strict["recall"])
    for k in (1, 5, 10):
        assert mine["recall"][f"text_to_image_R@{k}"] == pytest.approx(
            theirs[f"image_retrieval_recall@{k}"], abs=TOL
        )
        assert mine["recall"][f"image_to_text_R@{k}"] == pytest.approx(
            theirs[f"text_retrieval_recall@{k}"], abs=TOL
        )
    assert 0 < theirs["image_retrieval_recall@1"] < 1


def reference_linear_probe(ref: torch.nn.Module, root: Path, work: Path, monkeypatch) -> dict:
    """CLIP_benchmark's linear probe (``--task linear_probe``, its defaults: all shots, 10
    epochs, lr 0.1, batch 64, no validation split, seed 0) on the CPU. Its ``evaluate``
    insists on CUDA; given the features it would cache (its Featurizer: the model's image
    features, normalised), it runs unchanged with ``.cuda()`` as a no-op and inference on
    the CPU."""
    build_dataset, _, _ = clip_benchmark()
    from clip_benchmark.metrics import linear_probe as lp

    lp.accuracy = _accuracy
    oc = refs.open_clip()
    transform = oc.image_transform(BASE_VISION["image_size"], is_train=False)
    folder = work / "features" / "model"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        dataset = build_dataset(dataset_name=f"wds/{root.name}", root=str(root), transform=transform,
                                split=split, task="linear_probe")  # fmt: skip
        features, targets = [], []
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(dataset.batched(64), batch_size=None):
                features.append(torch.nn.functional.normalize(ref.encode_image(x), dim=-1))
                targets.append(y)
        torch.save(torch.cat(features), folder / f"features_{split}.pt")
        torch.save(torch.cat(targets), folder / f"targets_{split}.pt")
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    infer = lp.infer
    monkeypatch.setattr(
        lp, "infer", lambda model, loader, amp, device: infer(model, loader, amp, "cpu")
    )
    torch.manual_seed(0)  # its CLI seeds once at the start; here just before, as ours does
    return lp.evaluate(ref, None, None, -1, 64, 0, 0.1, 10, "model", 0, str(work / "features"),
                       "cuda", amp=False)  # fmt: skip


def test_linear_probe_equals_clip_benchmark(weights, tmp_path: Path, monkeypatch) -> None:
    ref, hub = weights

    # classes 0-2, 3-5 and 6-8 are drawn alike: a probe cannot tell them apart perfectly
    def hard(n: int, seed: int) -> list:
        return [(picture((i % 10) // 3, seed * 1000 + i), i % 10) for i in range(n)]

    root = write_wds(tmp_path / "wds_cifar10", hard(120, 4), split="train", shard_size=50,
                     templates=["a photo of a {c}."])  # fmt: skip
    write_wds(root, hard(50, 5), split="test", shard_size=50)
    mine = ours(hub, "linear-probe", root / "test", tmp_path / "out", "--train", str(root / "train"),
                "--recipe", "clip_benchmark")  # fmt: skip
    theirs = reference_linear_probe(ref, root, tmp_path, monkeypatch)
    m = mine["metrics"]
    assert m["top1"] == pytest.approx(theirs["lp_acc1"], abs=TOL)
    assert m["top5"] == pytest.approx(theirs["lp_acc5"], abs=TOL)
    assert m["mean_per_class_recall"] == pytest.approx(theirs["lp_mean_per_class_recall"], abs=TOL)
    assert mine["weight_decay"] == theirs["weight_decay"] == 0
    assert 0.1 < theirs["lp_acc1"] < 1.0


def test_the_probe_trains_the_same_weights_as_clip_benchmark(monkeypatch) -> None:
    """Below the accuracies: CLIP_benchmark's ``train`` and ours, on the same features in
    the same loader order, end at the same weights (learning-rate schedule, AdamW, the
    seeded initial weights and batch order all included)."""
    clip_benchmark()
    from clip_benchmark.metrics import linear_probe as lp

    from cliplab.evaluation.adamw_probe import _loader, _train

    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(150, 32, generator=g), dim=-1)
    y = torch.randint(0, 7, (150,), generator=g)
    for weight_decay in (0.0, 0.1):
        theirs = lp.train(
            torch.utils.data.DataLoader(lp.FeatureDataset(x, y), batch_size=32, shuffle=True),
            32, 7, weight_decay, 0.1, 4, False, "cpu", 0,
        ).module  # fmt: skip
        mine = _train(_loader(x, y, 32), 32, 7, weight_decay, 0.1, 4, 0)
        assert torch.allclose(mine.weight, theirs.weight, atol=1e-6)
        assert torch.allclose(mine.bias, theirs.bias, atol=1e-6)
