"""``cliplab data overlap`` (the paper's section 5): evaluation images that are resized or
re-encoded copies of training images are flagged as overlap, the others are clean, and the
zero-shot accuracy split adds up.

The detector is ``random:tiny-vit`` (seeded, so the same weights every run). On these
pictures (96 px, a hue each, one of four patterns) its embeddings put a copy at cosine
0.9996-1.0 from its original, the nearest *different* training picture at 0.88-0.98 (the
negatives) and the fresh pictures under 0.97 from every training picture; the threshold
measured on the edits lands at about 0.982. Taken as negatives, the copies' own originals
(cosine 0.9996+) would leave no threshold reaching the precision target: the test fails
when they are not skipped (tried)."""

from __future__ import annotations

import colorsys
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import cliplab
from cliplab.cli import main
from cliplab.data.evalsets import load_classification, write_classification_set
from cliplab.encode import FeatureStore
from cliplab.evaluation.overlap import (
    bootstrap_difference,
    nearest_training,
    overlap_analysis,
    write_overlap,
)
from cliplab.evaluation.registry import get

MODEL = "random:tiny-vit"
CLASSES = ["stripes", "a checkerboard", "discs", "a triangle"]
#: training pictures 0-23: 0-11 a folder of PNGs, 12-23 WebDataset shards
TRAIN = range(24)
#: eval set: (picture, how it was copied) for copies of training pictures, else fresh ones
EVAL = [(100, None), (1, "half-size"), (101, None), (104, None), (6, "jpeg-90"), (105, None),
        (11, "upscaled"), (106, None), (108, None), (20, "half-size jpeg-85"), (109, None),
        (110, None)]  # fmt: skip
COPIES = [i for i, (_, how) in enumerate(EVAL) if how]  # [1, 4, 6, 9]


def picture(i: int, size: int = 96) -> Image.Image:
    """Picture ``i``: its own hue, pattern ``i % 4`` (stripes, checkerboard, discs, a
    triangle) in the opposite hue."""
    rng = np.random.default_rng(i)
    hue = (i * 0.618) % 1
    background = colorsys.hsv_to_rgb(hue, 0.3 + 0.6 * rng.random(), 0.4 + 0.6 * rng.random())
    ink = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.8, 0.9))
    image = Image.new("RGB", (size, size), tuple(int(255 * c) for c in background))
    draw = ImageDraw.Draw(image)
    if i % 4 == 0:
        step = int(rng.integers(6, 16))
        for x in range(0, size, 2 * step):
            draw.rectangle((x, 0, x + step, size), fill=ink)
    elif i % 4 == 1:
        step = int(rng.integers(8, 20))
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2:
                    draw.rectangle((x, y, x + step, y + step), fill=ink)
    elif i % 4 == 2:
        for _ in range(4):
            cx, cy = int(rng.integers(0, size)), int(rng.integers(0, size))
            r = int(rng.integers(8, 28))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    else:
        draw.polygon([(0, size), (int(rng.integers(15, size - 15)), 0), (size, size)], fill=ink)
    return image


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def copy_of(i: int, how: str) -> Image.Image | bytes:
    image = picture(i)
    if how == "half-size":
        return image.resize((48, 48), Image.BILINEAR)
    if how == "jpeg-90":
        return jpeg(image, 90)
    if how == "upscaled":
        return image.resize((144, 144), Image.BICUBIC)
    return jpeg(image.resize((64, 64), Image.BILINEAR), 85)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of training PNGs, WebDataset shards of more, an evaluation set with four
    copies of training pictures among eight fresh ones, a folder without images."""
    root = tmp_path_factory.mktemp("overlap")
    folder, loose = root / "train-folder", root / "for-shards"
    folder.mkdir()
    loose.mkdir()
    for i in TRAIN:
        where = folder if i < 12 else loose
        picture(i).save(where / f"p{i:03d}.png")
        (where / f"p{i:03d}.txt").write_text(f"{CLASSES[i % 4]}, picture {i}")
    assert main(["data", "write", str(loose), "--out", str(root / "shards")]) == 0
    items = [(copy_of(i, how) if how else picture(i), i % 4) for i, how in EVAL]
    write_classification_set(
        root / "eval", items, name="pictures", classnames=CLASSES, templates=["a picture of {}."]
    )
    (root / "empty").mkdir()
    return {"folder": folder, "shards": root / "shards", "eval": root / "eval",
            "empty": root / "empty", "root": root}  # fmt: skip


def test_copies_of_training_images_are_flagged_and_the_accuracy_split_adds_up(
    data: dict[str, Path], tmp_path: Path
) -> None:
    model, preprocess = cliplab.load(MODEL)
    cache = tmp_path / "cache"
    store = FeatureStore(model, preprocess, cache_dir=cache, progress=False)
    report = overlap_analysis([data["folder"], data["shards"]], [data["eval"]], store,
                              model_name=MODEL)  # fmt: skip
    assert report.training["images"] == 24
    assert [s["images"] for s in report.training["sources"]] == [12, 12]
    c = report.calibration
    assert c["method"] == "target-precision" and c["reached"] and c["precision"] >= 0.99
    assert c["images"] == len(EVAL) and c["positives"] == 5 * len(EVAL)
    # the copies' nearest training image is their original: skipped, not a negative
    assert c["negatives_skipped"] >= len(COPIES) and c["negatives"] == len(EVAL)
    assert c["false_positive_rate"] == 0.0

    s = report.set("pictures")
    assert s.n == len(EVAL) and s.overlap == len(COPIES)
    assert s.overlap_indices == COPIES  # exactly the copies
    assert report.negatives.max() < report.threshold <= s.max_similarity[COPIES].min()
    assert s.max_similarity[COPIES].min() > 0.999
    clean = [i for i in range(len(EVAL)) if i not in COPIES]
    assert s.max_similarity[clean].max() < report.threshold
    assert s.share == len(COPIES) / len(EVAL) and s.false_positive_rate == 0.0
    # each copy's most similar training image is its original, in the folder or the shards
    pairs = {e["eval_index"]: e for e in s.examples}
    assert set(pairs) == set(COPIES) | {max(clean, key=lambda i: s.max_similarity[i])}
    for i in COPIES:
        original, e = EVAL[i][0], pairs[i]
        assert e["duplicate"]
        if original < 12:  # the folder: keyed by file name
            assert e["train_key"] == f"p{original:03d}.png"
            assert e["train_path"] == str((data["folder"] / e["train_key"]).resolve())
            assert e["train_source"] == str(data["folder"])
        else:  # the shards: numbered in the order written (sorted file names)
            assert e["train_key"] == f"{original - 12:09d}" and e["train_path"].endswith(".tar")
            assert e["train_source"] == str(data["shards"])

    # All is the protocol's own zero-shot top-1, and the weighted mix of Clean and Overlap
    protocol = get("zeroshot")(store, dataset=load_classification(data["eval"]))
    assert s.acc_all == pytest.approx(protocol.top1)
    n_clean, n_overlap = len(clean), len(COPIES)
    mix = (s.acc_clean * n_clean + s.acc_overlap * n_overlap) / len(EVAL)
    assert s.acc_all == pytest.approx(mix)
    assert s.difference == pytest.approx(s.acc_all - s.acc_clean)
    assert s.ci is not None and s.ci[0] <= s.ci[1]

    out = tmp_path / "out"
    written = write_overlap(report, out)
    assert set(written) == {"json", "md", "png"}
    saved = json.loads((out / "overlap.json").read_text())
    assert saved["sets"][0]["overlap_indices"] == COPIES and "max_similarity" not in saved
    assert "| pictures | 12 | 4 (33.3%) | 0.0% |" in (out / "overlap.md").read_text()

    # the command, end to end, on the same cache: the same verdicts, no feature computed again
    files = sorted(p.name for p in cache.iterdir())
    assert any(f.startswith("features-") for f in files)
    cli_out = tmp_path / "cli"
    argv = ["data", "overlap", "--train", str(data["folder"]), str(data["shards"]),
            "--eval", str(data["eval"]), "--model", MODEL, "--out", str(cli_out),
            "--cache-dir", str(cache)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in cache.iterdir()) == files
    result = json.loads((cli_out / "overlap.json").read_text())
    assert result["threshold"] == pytest.approx(report.threshold)
    assert result["sets"][0]["overlap_indices"] == COPIES
    assert result["sets"][0]["acc_all"] == pytest.approx(s.acc_all)
    assert (cli_out / "overlap.md").is_file() and (cli_out / "overlap.png").stat().st_size > 1000


def test_bad_input_exits_with_status_2(
    data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["data", "overlap", "--model", MODEL, "--out", str(data["root"] / "bad")]
    cases = {
        "evaluation set not found": ["--train", str(data["folder"]), "--eval",
                                     str(data["root"] / "missing")],
        "not an evaluation set": ["--train", str(data["folder"]), "--eval",
                                     str(data["folder"])],
        "training source not found": ["--train", str(data["root"] / "nowhere"), "--eval",
                                      str(data["eval"])],
        "no readable training images": ["--train", str(data["empty"]), "--eval",
                                        str(data["eval"])],
        "--precision must be in": ["--train", str(data["folder"]), "--eval", str(data["eval"]),
                                   "--precision", "1.5"],
    }  # fmt: skip
    for message, args in cases.items():
        assert main([*base, "--no-cache", *args]) == 2, message
        assert message in capsys.readouterr().err
    assert not (data["root"] / "bad" / "overlap.json").exists()


def test_bootstrap_interval_of_all_minus_clean() -> None:
    correct = np.array([True] * 30 + [False] * 50 + [True] * 20)
    overlap = np.array([False] * 80 + [True] * 20)  # overlap: all right; clean: 30 of 80
    lo, hi = bootstrap_difference(correct, overlap, resamples=2000, seed=0)
    point = correct.mean() - correct[~overlap].mean()  # 0.5 - 0.375
    assert 0 < lo < point < hi  # duplicates that help: the interval excludes 0
    assert bootstrap_difference(correct, np.zeros(100, bool)) == (0.0, 0.0)  # All is Clean
    assert bootstrap_difference(correct, np.ones(100, bool)) is None  # no Clean


def test_nearest_training_in_blocks_equals_one_search(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8)).astype(np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    queries = np.concatenate([train[[3, 41]], rng.normal(size=(5, 8)).astype(np.float32)])
    whole = nearest_training(queries, train, k=4, block=1000)
    blocked = nearest_training(queries, train, k=4, block=7)
    np.testing.assert_allclose(whole[0], blocked[0], rtol=1e-5)
    np.testing.assert_array_equal(whole[1], blocked[1])
    assert whole[1][:2, 0].tolist() == [3, 41]  # a training vector's nearest is itself
    exact = np.sort(queries @ train.T, axis=1)[:, ::-1][:, :4]
    np.testing.assert_allclose(whole[0], exact, rtol=1e-5)
    monkeypatch.setitem(sys.modules, "faiss", None)  # without FAISS: numpy, the same answer
    plain = nearest_training(queries, train, k=4, block=7)
    np.testing.assert_allclose(plain[0], whole[0], rtol=1e-5)
    np.testing.assert_array_equal(plain[1], whole[1])
