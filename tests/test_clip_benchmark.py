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
