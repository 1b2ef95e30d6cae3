"""``cliplab dedup``: byte-for-byte copies and edited copies (re-encoded, resized, cropped) of
a collection's images are found, told apart from distinct pictures with a threshold measured
on the collection itself, and deleted images are never reported.

The model is ``random:tiny-vit``: a random network, whose embeddings put distinct pictures
close together (cosine about 0.95-0.99) and edits closer still (0.99-1.0). The pictures are
chosen so the two overlap only at the margin: the test collection's threshold lands between
them only if it is measured and applied as it should be (a lower one groups distinct
pictures, a higher one leaves the crop out)."""

from __future__ import annotations

import colorsys
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import cliplab
from cliplab.cli import main
from cliplab.data.sources import spec_for_path
from cliplab.search.collection import Collection
from cliplab.search.dedup import EDITS, choose_threshold, synthetic_edits
from cliplab.search.embed import embed

MODEL = "random:tiny-vit"
DISTINCT = 36  # pictures; with this many, distinct and edited pairs barely overlap (see above)
COPIES = {"p001.png", "copy-a.png", "copy-b.png"}
EDITED = {"p002.png", "p002-q50.jpg", "p002-small.png", "p002-crop.png"}


def picture(i: int, n: int = DISTINCT, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """Picture ``i`` of ``n``: its own hue, one of four patterns (stripes, a checkerboard,
    discs, a triangle) in the opposite hue, and a caption drawn on it."""
    rng = np.random.default_rng(i)
    w, h = size
    hue = i / n
    background = colorsys.hsv_to_rgb(hue, 0.3 + 0.6 * rng.random(), 0.3 + 0.7 * rng.random())
    ink = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.8, 0.9))
    image = Image.new("RGB", size, tuple(int(255 * c) for c in background))
    draw = ImageDraw.Draw(image)
    if i % 4 == 0:
        step = int(rng.integers(8, 24))
        for x in range(0, w, 2 * step):
            draw.rectangle((x, 0, x + step, h), fill=ink)
    elif i % 4 == 1:
        step = int(rng.integers(10, 30))
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2:
                    draw.rectangle((x, y, x + step, y + step), fill=ink)
    elif i % 4 == 2:
        for _ in range(4):
            cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, 40))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    else:
        draw.polygon([(0, h), (int(rng.integers(20, w - 20)), 0), (w, h)], fill=ink)
    draw.text((5, 5), f"picture {i}", fill=(0, 0, 0))
    return image


def make_folder(root: Path) -> Path:
    """``DISTINCT`` pictures, two byte-for-byte copies of p001, and three edited copies of
    p002: a JPEG re-encode, a half-size PNG, a 94% centre crop."""
    root.mkdir(parents=True)
    for i in range(DISTINCT):
        picture(i).save(root / f"p{i:03d}.png")
    for name in ("copy-a.png", "copy-b.png"):
        shutil.copy(root / "p001.png", root / name)
    original = Image.open(root / "p002.png").convert("RGB")
    w, h = original.size
    original.save(root / "p002-q50.jpg", quality=50)
    original.resize((w // 2, h // 2), Image.BILINEAR).save(root / "p002-small.png")
    original.crop((5, 4, w - 5, h - 4)).save(root / "p002-crop.png")
    return root


@pytest.fixture(scope="module")
def model():
    return cliplab.load(MODEL)


def embed_folder(folder: Path, out: Path, model) -> Path:
    embed(spec_for_path(str(folder)), out, *model, model_spec=MODEL, progress=False,
          log=lambda _: None)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def collection(tmp_path_factory, model) -> Path:
    root = tmp_path_factory.mktemp("dedup")
    return embed_folder(make_folder(root / "pics"), root / "c", model)


def ids_of(out: Path) -> dict[str, int]:
    """Live images' ids by file name."""
    c = Collection(out)
    keys = c.metadata.column("key").to_pylist()
    return {keys[i]: int(i) for i in np.flatnonzero(c.alive())}


def test_dedup_finds_the_copies_and_the_edits_and_nothing_else(collection: Path, capsys) -> None:
    assert main(["dedup", str(collection)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((collection / "dedup.json").read_text())
    ids = ids_of(collection)
    # the copies are one exact group; the edited copies and their original one near group,
    # and no distinct pictures are grouped (a threshold a little lower would join some)
    assert report["exact"] == [sorted(ids[k] for k in COPIES)]
    assert report["near"] == [sorted(ids[k] for k in EDITED)]
    chosen = report["chosen_on"]
    assert chosen["method"] == "target-precision" and chosen["reached"]
    assert chosen["target_precision"] == 0.99
    assert 0.99 <= chosen["precision"] <= 1 and 0.5 <= chosen["recall"] <= 1
    # every distinct picture but one of the copies was sampled (200 > 39): 5 edits each
    assert chosen["images"] == DISTINCT + len(EDITED) - 1
    assert chosen["edits"] == len(EDITS) * chosen["images"]
    assert 0 < chosen["negatives"] <= chosen["images"]
    assert chosen["negatives_skipped"] > 0  # the edited copies are each other's nearest
    assert set(chosen["recall_by_edit"]) == set(EDITS)
    # "similar" pairs lie below the threshold, never inside a group
    grouped = {i for g in report["exact"] + report["near"] for i in g}
    for a, b, score in report["similar"]:
        assert report["similar_threshold"] <= score < report["threshold"]
        assert a < b and not {a, b} <= grouped
    c = Collection(collection)
    assert report["fingerprint"] == c.fingerprint and report["generation"] == c.generation == 1
    counts = report["counts"]
    assert counts["live"] == DISTINCT + 2 + 3 and counts["tombstones"] == 0
    assert counts["hashes_from_file_list"] == counts["live"] and counts["unreadable"] == 0
    assert counts["exact_redundant"] == 2 and counts["near_images"] == 4
    assert report["seconds"] > 0
    # the summary names the files of each group
    assert "exact (3)" in printed and "near (4)" in printed and "p002-crop.png" in printed
    assert f"precision {100 * chosen['precision']:.1f}%" in printed


def test_a_given_threshold_overrides_and_is_measured(
    collection: Path, tmp_path: Path, capsys
) -> None:
    before = (collection / "dedup.json").stat().st_mtime_ns
    out = tmp_path / "report.json"
    assert main(["dedup", str(collection), "--threshold", "0.5", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert (collection / "dedup.json").stat().st_mtime_ns == before  # --out: only there
    chosen = printed["chosen_on"]
    assert printed["threshold"] == 0.5 and chosen["method"] == "given"
    # far below every distinct pair: all pictures are one group (the copies by their first
    # id), at a poor precision
    assert len(printed["near"]) == 1 and len(printed["near"][0]) == DISTINCT + 3
    assert chosen["recall"] == 1.0 and 0 <= chosen["precision"] < 0.99 and not chosen["reached"]
    assert printed["exact"] and printed["similar"] == []


def test_bad_input_exits_2_with_a_message(collection: Path, tmp_path: Path, capsys) -> None:
    for argv in (
        ["dedup", str(tmp_path)],  # not a collection
        ["dedup", str(collection), "--threshold", "1.5"],
        ["dedup", str(collection), "--sample", "0"],
        ["dedup", str(collection), "--precision", "0"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "cliplab dedup: error:" in err and "Traceback" not in err


def test_deleted_images_are_never_reported(tmp_path: Path, model) -> None:
    folder = make_folder(tmp_path / "pics")
    out = embed_folder(folder, tmp_path / "c", model)
    gone = {"copy-b.png", "p002-small.png"}
    before = ids_of(out)
    for name in gone:
        (folder / name).unlink()
    assert main(["embed", str(folder), "--out", str(out), "--quiet"]) == 0  # a sync
    c = Collection(out)
    assert c.generation == 2 and sorted(c.deleted.tolist()) == sorted(before[n] for n in gone)
    assert main(["dedup", str(out)]) == 0
    report = json.loads((out / "dedup.json").read_text())
    ids = ids_of(out)
    # their embeddings are still stored (a copy's is p001's own): only the tombstones hide them
    assert report["exact"] == [sorted(ids[k] for k in COPIES - gone)]
    assert report["near"] == [sorted(ids[k] for k in EDITED - gone)]
    dead = {before[n] for n in gone}
    mentioned = {i for g in report["exact"] + report["near"] for i in g}
    mentioned |= {i for a, b, _ in report["similar"] for i in (a, b)}
    assert not mentioned & dead
    assert report["generation"] == 2 and report["counts"]["tombstones"] == 2


def test_without_a_file_list_images_are_hashed_and_unreadable_ones_counted(
    tmp_path: Path, model
) -> None:
    """A manifest's collection has no file list: its images are read and hashed; a file gone
    since is counted as unreadable and left out of the exact groups."""
    for i in range(6):
        picture(i, 6).save(tmp_path / f"p{i}.png")
    shutil.copy(tmp_path / "p0.png", tmp_path / "twin.png")
    names = [f"p{i}.png" for i in range(6)] + ["twin.png"]
    (tmp_path / "m.csv").write_text("image,caption\n" + "".join(f"{n},x\n" for n in names))
    embed(spec_for_path(str(tmp_path / "m.csv")), tmp_path / "c", *model, model_spec=MODEL,
          progress=False, log=lambda _: None)  # fmt: skip
    (tmp_path / "p5.png").unlink()
    assert main(["dedup", str(tmp_path / "c"), "--sample", "3"]) == 0
    report = json.loads((tmp_path / "c" / "dedup.json").read_text())
    assert report["exact"] == [[0, 6]]
    counts = report["counts"]
    assert counts["hashes_from_file_list"] == 0 and counts["hashed"] == 6
    assert counts["unreadable"] == 1
    assert report["chosen_on"]["images"] + report["chosen_on"]["unreadable"] == 3


def test_choose_threshold_takes_the_lowest_reaching_the_target() -> None:
    positives = np.array([0.90, 0.95, 0.97, 0.99])
    negatives = np.array([0.50, 0.80, 0.92])
    strict = choose_threshold(positives, negatives, 0.99)
    assert (strict.threshold, strict.precision, strict.recall) == (0.95, 1.0, 0.75)
    assert strict.reached and strict.method == "target-precision"
    loose = choose_threshold(positives, negatives, 0.8)  # 4 of 5 at 0.90
    assert (loose.threshold, loose.precision, loose.recall) == (0.90, 0.8, 1.0)
    # nothing reaches 1.0 (a negative above every positive): the best F1, said so
    fallback = choose_threshold(positives, np.array([0.999]), 1.0)
    assert fallback.method == "best-f1" and not fallback.reached
    assert (fallback.threshold, fallback.recall) == (0.90, 1.0)
    given = choose_threshold(positives, negatives, 0.99, given=0.96)
    assert (given.threshold, given.precision, given.recall, given.method) == (
        0.96, 1.0, 0.5, "given",
    )  # fmt: skip


def test_synthetic_edits_are_small_and_seeded() -> None:
    image = picture(3)
    edits = synthetic_edits(image, np.random.default_rng([0, 3]))
    assert len(edits) == len(EDITS) and all(e.mode == "RGB" for e in edits)
    sizes = dict(zip(EDITS, (e.size for e in edits)))
    assert sizes["jpeg"] == sizes["half-size"] == sizes["colour"] == image.size
    assert 0.85 * 160 - 1 <= sizes["crop"][0] <= 0.90 * 160 + 1
    pixels = np.asarray(image, dtype=np.int16)
    covered = (np.asarray(edits[EDITS.index("overlay")], dtype=np.int16) != pixels).any(-1).mean()
    assert 0 < covered <= 0.05
    again = synthetic_edits(image, np.random.default_rng([0, 3]))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(edits, again))
