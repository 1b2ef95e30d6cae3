"""Evaluation sets in the layouts people have them, read with no conversion step: the same
images, labels, class names and templates from CLIP_benchmark's WebDataset layout, an
ImageFolder tree, CSV and Parquet tables, and Karpathy-split JSON; bundled class names and
templates fill what a set lacks; malformed sets are clear errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cliplab.cli import main
from cliplab.data.benchmarks import benchmark, known_benchmarks
from cliplab.data.evalsets import load_classification, load_retrieval
from cliplab.data.images import open_rgb
from cliplab.data.layouts import detect
from layouts import (
    CLASSES,
    picture,
    samples,
    write_imagefolder,
    write_karpathy,
    write_table,
    write_wds,
    write_wds_retrieval,
)


def pixels(dataset, i: int) -> np.ndarray:
    return np.asarray(open_rgb(dataset.images[i]))


def test_the_paper_datasets_are_bundled() -> None:
    names = known_benchmarks()
    assert len(names) == 27 and {"imagenet1k", "cifar10", "cifar100", "cars", "mnist"} <= set(names)
    imagenet = benchmark("wds/ImageNet-1k")
    assert imagenet.name == "imagenet1k" and len(imagenet.classnames) == 1000
    assert imagenet.classnames[:3] == ("tench", "goldfish", "great white shark")
    assert len(imagenet.templates) == 80 and imagenet.templates[0] == "a bad photo of a {}."
    assert benchmark("cifar10").classnames == tuple(CLASSES)
    assert (
        len(benchmark("CIFAR-100").classnames) == 100 and benchmark("stanfordcars").name == "cars"
    )
    fer = benchmark("fer2013")
    assert fer.members[3] == ("smiling",) and fer.classnames[3] == "happy"
    assert all(t.count("{}") == 1 for n in names for t in benchmark(n).templates)
    assert benchmark("no-such-set") is None


def test_every_classification_layout_reads_the_same_set(tmp_path: Path) -> None:
    items = samples(30)
    sets = {
        "clip_benchmark": write_wds(tmp_path / "wds_cifar10", items, shard_size=7,
                                    templates=["a photo of a {c}.", "a blurry photo of a {c}."]),
        "imagefolder": write_imagefolder(tmp_path / "folder", items),
        "table": write_table(tmp_path / "csv" / "test.csv", items),
        "parquet": write_table(tmp_path / "pq" / "test.parquet", items),
        "names": write_table(tmp_path / "named" / "test.csv", items, names=True),
    }  # fmt: skip
    (tmp_path / "csv" / "classnames.txt").write_text("\n".join(CLASSES))
    (tmp_path / "pq" / "classnames.txt").write_text("\n".join(CLASSES))
    loaded = {k: load_classification(v) for k, v in sets.items()}
    assert detect(sets["clip_benchmark"]) == "clip_benchmark"
    assert detect(sets["imagefolder"]) == "imagefolder" and detect(sets["table"]) == "table"
    wds = loaded["clip_benchmark"]
    assert wds.templates == ["a photo of a {}.", "a blurry photo of a {}."]  # {c} -> {}
    assert [y for _, y in items] == wds.labels
    for name, dataset in loaded.items():
        assert len(dataset) == 30, name
        assert dataset.classnames == CLASSES, name
        order = (
            sorted(range(30), key=lambda i: (items[i][1], i))
            if name == "imagefolder"
            else range(30)
        )
        assert [items[i][1] for i in order] == dataset.labels, name
        for j, i in enumerate(order):
            if j % 7 == 0:
                assert np.array_equal(pixels(dataset, j), np.asarray(items[i][0])), (name, j)
    # fingerprints name the content: a set read twice is the same set, another one differs
    assert load_classification(sets["clip_benchmark"]).fingerprint == wds.fingerprint
    assert wds.subset([0, 5]).fingerprint != wds.fingerprint
    assert np.array_equal(pixels(wds.subset([3, 4]), 1), np.asarray(items[4][0]))


def test_bundled_names_fill_what_a_set_lacks(tmp_path: Path) -> None:
    items = samples(20)
    # no classnames.txt: the folder name "wds_cifar10" says which benchmark it is
    bare = load_classification(write_wds(tmp_path / "wds_cifar10", items, classnames=None))
    assert bare.classnames == CLASSES and bare.name == "cifar10"
    assert bare.templates == list(benchmark("cifar10").templates)
    # ImageFolder of "n01440764"-style folders with --dataset-name: the bundled names
    folders = [f"n{i:08d}" for i in range(10)]
    tree = write_imagefolder(tmp_path / "tree", items, folders)
    named = load_classification(tree, dataset_name="cifar10")
    assert named.classnames == CLASSES and len(named.templates) == 18
    plain = load_classification(tree)
    assert plain.classnames == folders and plain.templates is None
    # a set's own files win
    (tree / "classnames.txt").write_text("\n".join(c.upper() for c in CLASSES))
    assert load_classification(tree, dataset_name="cifar10").classnames[0] == "AIRPLANE"
    with pytest.raises(ValueError, match="unknown dataset name"):
        load_classification(tree, dataset_name="cifar11")
    with pytest.raises(ValueError, match="has 100"):
        load_classification(
            write_imagefolder(tmp_path / "t2", items, folders), dataset_name="cifar100"
        )


def test_the_cli_names_the_dataset_and_the_split(tmp_path: Path, capsys) -> None:
    """``cliplab eval zeroshot --dataset-name`` gives a bare tree its bundled names and
    templates; ``--split`` picks the split folder of a CLIP_benchmark set."""
    import json

    folders = [f"n{i:08d}" for i in range(10)]
    tree = write_imagefolder(tmp_path / "tree", samples(20), folders)
    run = ["eval", "zeroshot", "--model", "random:tiny-vit", "--quiet", "--no-cache"]
    out = tmp_path / "out"
    assert main([*run, "--dataset", str(tree), "--dataset-name", "cifar10", "--out", str(out)]) == 0
    (found,) = out.glob("zeroshot-*.json")
    result = json.loads(found.read_text())
    assert result["templates"] == 18 and result["num_classes"] == 10, result
    assert main([*run, "--dataset", str(tree), "--dataset-name", "cifar11"]) == 2
    assert "unknown dataset name" in capsys.readouterr().err
    root = write_wds(tmp_path / "wds_x", samples(6), split="train")
    assert main([*run, "--dataset", str(root), "--out", str(out)]) == 2  # no test/ split
    assert "no shards in test/ (it has train: --split)" in capsys.readouterr().err
    assert (
        main([*run, "--dataset", str(root), "--split", "train", "--out", str(tmp_path / "o2")]) == 0
    )
    (found,) = (tmp_path / "o2").glob("zeroshot-*.json")
    assert json.loads(found.read_text())["n"] == 6


def test_retrieval_layouts(tmp_path: Path) -> None:
    items = [(picture(i % 10, i), [f"caption {i} a", f"caption {i} b"]) for i in range(12)]
    wds = load_retrieval(write_wds_retrieval(tmp_path / "wds_flickr", items))
    karpathy = load_retrieval(
        write_karpathy(tmp_path / "k", [(p, c + ["c", "d", "e"]) for p, c in items])
    )
    assert wds.captions[3] == ["caption 3 a", "caption 3 b"]
    assert len(karpathy) == 12 and karpathy.captions[0][:2] == ["caption 0 a", "caption 0 b"]
    assert len(karpathy.captions[0]) == 5 and karpathy.name == "flickr30k-test"
    for dataset in (wds, karpathy):
        assert np.array_equal(pixels(dataset, 5), np.asarray(items[5][0]))
    with pytest.raises(ValueError, match="no images of split"):
        load_retrieval(tmp_path / "k" / "dataset_flickr30k.json", split="val")


def test_malformed_sets_are_clear_errors(tmp_path: Path, capsys) -> None:
    items = samples(10)
    root = write_wds(tmp_path / "bad", items)
    with tarfile.open(root / "test" / "1.tar", "w"):
        pass
    (root / "test" / "nshards.txt").write_text("2")
    assert len(load_classification(root)) == 10  # an empty shard adds nothing
    with tarfile.open(root / "test" / "1.tar", "w") as tar:
        info = tarfile.TarInfo("lonely.png")
        data = b"\x89PNG"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="'lonely' has no cls member"):
        load_classification(root)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a table"):
        load_classification(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an evaluation set cliplab reads"):
        load_classification(tmp_path / "empty")
    with pytest.raises(ValueError, match="retrieval set, not a classification"):
        load_classification(write_karpathy(tmp_path / "k", [(picture(0, 0), ["a"])]))
    write_table(tmp_path / "t" / "test.csv", items)
    (tmp_path / "t" / "test.csv").write_text("path,label\nimages/00000.png,zebra\n")
    with pytest.raises(ValueError, match="labels that are not class names"):
        load_classification(tmp_path / "t" / "test.csv", dataset_name="cifar10")
    # the CLI says so with exit status 2, no traceback
    assert (
        main(
            ["eval", "zeroshot", "--model", "random:tiny-vit", "--dataset", str(tmp_path / "empty")]
        )
        == 2
    )
    assert "not an evaluation set" in capsys.readouterr().err
