"""``cliplab eval suite``: a suite file of (dataset, protocol, options) run for several
models into one table in CLIP_benchmark's result schema (JSON, CSV), Markdown and a plot;
the same numbers as the single-protocol commands; bad suites are exit status 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cliplab.cli import main
from layouts import CLASSES, picture, samples, write_imagefolder, write_karpathy, write_wds

MODELS = ["random:tiny-vit", "random:tiny-rn"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    write_wds(root / "sets" / "wds_cifar10", samples(30, seed=1), classnames=None)
    write_imagefolder(root / "sets" / "train", samples(40, seed=2))
    write_imagefolder(root / "sets" / "test", samples(20, seed=3))
    items = [(picture(i % 10, 900 + i), [f"a photo of a {CLASSES[i % 10]} {i}"]) for i in range(12)]
    write_karpathy(root / "sets" / "k", items)
    (root / "suite.toml").write_text(
        """
[[task]]
dataset = "sets/wds_cifar10"
options = { ties = "topk" }

[[task]]
name = "folders"
dataset = "sets/test"
dataset_name = "cifar10"
protocol = "linear-probe"
train = "sets/train"
options = { C = 1.0 }

[[task]]
dataset = "sets/k/dataset_flickr30k.json"
"""
    )
    return root


def test_a_suite_for_two_models_is_one_table(suite: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["eval", "suite", "--model", *MODELS, "--suite", str(suite / "suite.toml"),
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 6
    assert {r["model"] for r in records} == set(MODELS)
    tasks = [r["task"] for r in records[:3]]
    assert tasks == ["zeroshot_classification", "linear_probe", "zeroshot_retrieval"]
    zs, lp, ret = records[:3]
    assert set(zs["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert zs["dataset"] == "cifar10"  # the bundled benchmark the folder name names
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"} <= set(lp["metrics"])
    assert lp["dataset"] == "folders" and lp["cliplab"]["options"] == {"C": 1.0}
    assert (
        "image_retrieval_recall@5" in ret["metrics"] and "text_retrieval_recall@1" in ret["metrics"]
    )
    assert (
        ret["metrics"]["image_retrieval_recall@5"]
        == ret["cliplab"]["result"]["recall"]["text_to_image_R@5"]
    )
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and float(rows[0]["acc1"]) == zs["metrics"]["acc1"]
    table = (out / "results.md").read_text()
    assert all(m in table for m in MODELS) and "linear probe top-1" in table
    assert (out / "results.png").stat().st_size > 5000
    # the same numbers as the single protocol command, from the cached features
    assert main(["eval", "zeroshot", "--model", MODELS[0], "--dataset", str(suite / "sets" / "wds_cifar10"),
                 "--ties", "topk", "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache"),
                 "--quiet"]) == 0  # fmt: skip
    (one,) = (tmp_path / "one").glob("zeroshot-*.json")
    assert json.loads(one.read_text())["top1"] == zs["metrics"]["acc1"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[task]]\ndataset = "sets/test"\nprotocol = "nope"\n', "unknown protocol"),
        ('[[task]]\ndataset = "sets/test"\noptions = { colour = 1 }\n', "colour"),
        ('[[task]]\ndataset = "sets/test"\nshots = 3\n', "unknown keys"),
        ('[[task]]\nprotocol = "zeroshot"\n', "needs a dataset"),
        ("title = 'x'\n", "no tasks"),
        ("[[task]\n", "not valid TOML"),
        ('[[task]]\ndataset = "sets/missing"\n', "no such evaluation set"),
    ],
)
def test_bad_suites_are_exit_status_2(
    suite: Path, tmp_path: Path, capsys, text: str, message: str
) -> None:
    path = suite / f"bad-{abs(hash(text))}.toml"
    path.write_text(text)
    assert (
        main(["eval", "suite", "--model", MODELS[0], "--suite", str(path), "--out", str(tmp_path)])
        == 2
    )
    assert message in capsys.readouterr().err


def test_model_columns_are_short_and_distinct(tmp_path: Path) -> None:
    """Two runs' models both in ``.../train/model`` get a column each, named by their run."""
    from cliplab.cli.evaluate import model_labels

    for run in ("demo", "wit"):
        (tmp_path / "runs" / run / "train" / "model").mkdir(parents=True)
    demo, wit = (str(tmp_path / "runs" / r / "train" / "model") for r in ("demo", "wit"))
    assert model_labels([demo, wit, "random:tiny-vit"]) == ["demo", "wit", "random:tiny-vit"]
    assert model_labels([demo, demo]) == ["demo", "demo (2)"]
    for side in ("a", "b"):
        (tmp_path / side / "x").mkdir(parents=True)
        (tmp_path / side / "x" / "m.safetensors").touch()
    files = [str(tmp_path / side / "x" / "m.safetensors") for side in ("a", "b")]
    assert model_labels(files) == ["a/x/m", "b/x/m"]
