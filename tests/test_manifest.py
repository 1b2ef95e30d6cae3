"""CSV, Parquet and folder sources, ``build_source`` for every kind, and the ``cliplab data``
commands (write shards from a folder and a CSV, survey them)."""

from __future__ import annotations

import builtins
import io
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliplab.cli import main
from cliplab.data.decode import ERROR_MEMBER, ImageDecoder
from cliplab.data.manifest import CsvSource, FolderSource, ParquetSource, image_ext
from cliplab.data.sources import KINDS, build_source
from cliplab.data.stream import BadSample
from cliplab.data.webdataset import WebDatasetSource, stream_share


def save_image(path: Path, seed: int, fmt: str = "JPEG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def outcome(record) -> str:
    try:
        ImageDecoder()(record, random.Random(0))
    except BadSample as e:
        return e.reason
    return "ok"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """images/: 5 captioned images (two in a subfolder, one PNG), one without a caption, one
    text file posing as an image, and a notes.txt that is no sidecar."""
    root = tmp_path / "images"
    for i, name in enumerate(["a.jpg", "b.jpg", "sub/c.jpeg", "sub/deeper/d.png", "e.JPG"]):
        save_image(root / name, i, "PNG" if name.endswith("png") else "JPEG")
        (root / name).with_suffix(".txt").write_text(f"caption of {name}\n")
    (root / "sub" / "deeper" / "d.json").write_text(json.dumps({"source": "camera"}))
    save_image(root / "nocaption.jpg", 9)
    (root / "fake.png").write_text("I am text")
    (root / "fake.txt").write_text("a fake")
    (root / "notes.txt").write_text("not a sidecar")
    return root


def test_folder_source(image_folder: Path) -> None:
    source = FolderSource(image_folder)
    assert source.num_samples() == 7
    records = {r.key: r for r in source.scan()}
    assert sorted(records) == sorted(
        ["a.jpg", "b.jpg", "e.JPG", "fake.png", "nocaption.jpg", "sub/c.jpeg", "sub/deeper/d.png"]
    )
    assert set(records["sub/c.jpeg"].members) == {"jpg", "txt"}
    assert set(records["sub/deeper/d.png"].members) == {"png", "txt", "json"}
    outcomes = Counter(outcome(r) for r in records.values())
    assert outcomes == {"ok": 5, "missing-caption": 1, "not-an-image": 1}
    assert ImageDecoder()(records["a.jpg"], random.Random(0))[1] == "caption of a.jpg"


@pytest.mark.parametrize("num_streams", [1, 2, 3, 10])
def test_row_sources_split_disjoint_and_complete(image_folder: Path, num_streams: int) -> None:
    source = FolderSource(image_folder)
    seen = []
    for stream in range(num_streams):
        it = source.iter_raw(seed=1, epoch=0, stream=stream, num_streams=num_streams)
        share = len(range(stream, 7, num_streams))
        seen += [next(it).key for _ in range(share)]
    assert sorted(seen) == sorted(r.key for r in source.scan())


def test_row_sources_reshuffle_each_pass_deterministically(image_folder: Path) -> None:
    source = FolderSource(image_folder)

    def first(seed: int, n: int = 21) -> list[str]:
        it = source.iter_raw(seed, 0, 0, 1)
        return [next(it).key for _ in range(n)]

    a = first(0)
    assert a == first(0) and a != first(1)
    assert sorted(a[:7]) == sorted(a[7:14]) and a[:7] != a[7:14]


def write_csv(
    path: Path, rows: list[list[str]], header=("image", "caption", "url"), sep=","
) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(header)
        writer.writerows(rows)


def test_csv_source(tmp_path: Path) -> None:
    jpg = save_image(tmp_path / "img" / "0.jpg", 0)
    save_image(tmp_path / "img" / "1.png", 1, "PNG")
    save_image(tmp_path / "elsewhere" / "2.jpg", 2)
    rows = [
        ["img/0.jpg", 'a red, "quoted" caption', "http://x/0"],
        ["img/1.png", "  ", "http://x/1"],
        [str(tmp_path / "elsewhere" / "2.jpg"), "absolute path", ""],
        ["img/missing.jpg", "gone", ""],
        ["", "no image at all", ""],
        ["img", "a folder, not a file", ""],
    ]
    write_csv(tmp_path / "m.csv", rows)
    source = CsvSource(tmp_path / "m.csv", name="web")
    assert source.num_samples() == 6
    records = list(source.scan())
    assert [r.key for r in records] == [f"{i:09d}" for i in range(6)]
    assert records[0].members["jpg"] == jpg and records[0].source == "web"
    assert json.loads(records[0].members["json"]) == {"url": "http://x/0"}
    assert [outcome(r) for r in records] == [
        "ok",
        "empty-caption",
        "ok",
        "missing-file",
        "missing-file",
        "unreadable-file",
    ]
    assert ImageDecoder()(records[0], random.Random(0))[1] == 'a red, "quoted" caption'


def test_csv_options_and_errors(tmp_path: Path) -> None:
    save_image(tmp_path / "data" / "x.jpg", 0)
    write_csv(tmp_path / "m.tsv", [["x.jpg", "tab separated"]], header=("file", "text"), sep="\t")
    source = CsvSource(tmp_path / "m.tsv", "file", "text", root=tmp_path / "data")
    assert ImageDecoder()(next(source.scan()), random.Random(0))[1] == "tab separated"
    no_caption = next(CsvSource(tmp_path / "m.tsv", "file", None, root=tmp_path / "data").scan())
    assert "txt" not in no_caption.members
    with pytest.raises(ValueError, match="no column 'image'"):
        CsvSource(tmp_path / "m.tsv")
    (tmp_path / "latin1.csv").write_bytes("image,caption\nx.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        CsvSource(tmp_path / "latin1.csv")


def test_image_ext_sniffs_unknown_suffixes() -> None:
    assert image_ext("a.JPEG") == "jpg" and image_ext("a.webp") == "webp"
    assert image_ext("blob", b"\x89PNG\r\n\x1a\n....") == "png"
    assert image_ext("blob.bin", b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert image_ext("blob", b"hello") == "img"


def test_parquet_source(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    paths, blobs = [], []
    for i in range(10):
        blobs.append(save_image(tmp_path / "img" / f"{i}.jpg", i))
        paths.append(f"img/{i}.jpg")
    paths[3] = "img/missing.jpg"
    table = pa.table(
        {"image": paths, "caption": [f"photo {i}" for i in range(10)], "score": list(range(10))}
    )
    pq.write_table(table, tmp_path / "paths.parquet", row_group_size=3)  # 4 row groups
    source = ParquetSource(tmp_path / "paths.parquet")
    assert source.num_samples() == 10 and len(source.units) == 4
    records = list(source.scan())
    assert [outcome(r) for r in records].count("missing-file") == 1
    assert json.loads(records[4].members["json"]) == {"score": 4}
    assert ImageDecoder()(records[4], random.Random(0))[1] == "photo 4"
    # split across streams like shards: disjoint and complete
    for num_streams in (1, 3, 6):
        seen = []
        for stream in range(num_streams):
            units, stride, offset = stream_share(len(source.units), stream, num_streams)
            share = sum(len(range(offset, _rows(source, u), stride)) for u in units)
            it = source.iter_raw(0, 0, stream, num_streams)
            seen += [next(it).key for _ in range(share)]
        assert sorted(seen) == [f"{i:09d}" for i in range(10)]
    # image bytes, and Hugging Face's {"bytes", "path"} struct
    images = pa.table({"img": blobs[:2], "text": ["one", "two"]})
    pq.write_table(images, tmp_path / "bytes.parquet")
    hf = pa.table({"image": [{"bytes": blobs[2], "path": "x.jpg"}], "caption": ["three"]})
    pq.write_table(hf, tmp_path / "hf.parquet")
    assert [
        ImageDecoder()(r, random.Random(0))[1]
        for r in ParquetSource(tmp_path / "bytes.parquet", "img", "text").scan()
    ] == ["one", "two"]
    assert (
        ImageDecoder()(next(ParquetSource(tmp_path / "hf.parquet").scan()), random.Random(0))[1]
        == "three"
    )


def _rows(source: ParquetSource, unit: int) -> int:
    import pyarrow.parquet as pq

    file, group, _ = source.units[unit]
    return pq.ParquetFile(file).metadata.row_group(group).num_rows


def test_parquet_without_pyarrow_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ImportError, match=r"cliplab\[parquet\]"):
        ParquetSource(tmp_path / "x.parquet")


def test_build_source_every_kind(tmp_path: Path, image_folder: Path) -> None:
    write_csv(tmp_path / "m.csv", [["images/a.jpg", "x", ""]])
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "classes" / "cat" / "1.png")
    specs = {
        "synthetic": {"num_samples": 10},
        "folder": {"root": str(image_folder)},
        "csv": {"path": str(tmp_path / "m.csv")},
        "classes": {"path": str(tmp_path / "classes")},
    }
    for kind, spec in specs.items():
        assert build_source({"kind": kind, **spec}).num_samples() > 0
    kinds = {"synthetic", "webdataset", "shards", "csv", "parquet", "folder", "classes"}
    assert set(KINDS) == kinds
    with pytest.raises(ValueError, match="unknown field of a csv source: 'nope'"):
        build_source({"kind": "csv", "nope": 1})
    with pytest.raises(ValueError, match="unknown data source kind"):
        build_source({"kind": "laion"})


# --------------------------------------------------------------------------- command line


def test_cli_write_and_stats_from_a_folder(image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "shards"
    assert main(["data", "write", str(image_folder), "--out", str(out), "--max-samples", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 5 and summary["failures"] == {
        "missing-caption": 1,
        "not-an-image": 1,
    }
    assert summary["shards"] == 3
    records = list(WebDatasetSource(sorted(str(p) for p in out.glob("*.tar"))).scan())
    assert len(records) == 5 and all(outcome(r) == "ok" for r in records)
    assert sorted(json.loads(r.members["json"])["source_key"] for r in records) == [
        "a.jpg",
        "b.jpg",
        "e.JPG",
        "sub/c.jpeg",
        "sub/deeper/d.png",
    ]
    assert main(["data", "stats", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["ok"] == 5
        and report["bad"] == {}
        and report["written"]["failures"] == summary["failures"]
    )
    assert report["image_width"]["max"] == 24 and report["caption_chars"]["min"] == len(
        "caption of a.jpg"
    )
    assert main(["data", "stats", str(out)]) == 0
    assert "caption_chars" in capsys.readouterr().out


def test_cli_write_from_a_csv_with_resize(tmp_path: Path, capsys) -> None:
    for i in range(4):
        array = np.random.default_rng(i).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    write_csv(
        tmp_path / "m.csv",
        [[f"{i}.png", f"picture {i}", ""] for i in range(4)] + [["5.png", "x", ""]],
    )
    out = tmp_path / "out"
    assert (
        main(["data", "write", str(tmp_path / "m.csv"), "--out", str(out), "--resize", "64"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["failures"] == {"missing-file": 1}
    records = list(WebDatasetSource(str(out / "shard-000000.tar")).scan())
    image, caption = ImageDecoder()(records[2], random.Random(0))
    assert (
        set(records[2].members) == {"jpg", "txt", "json"}
        and image.size == (85, 64)
        and caption == "picture 2"
    )
    assert (
        main(["data", "stats", str(out / "shard-{000000..000000}.tar"), "--decode", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["formats"] == {"JPEG": 4}


def test_cli_write_synthetic_and_errors(tmp_path: Path, capsys) -> None:
    syn = str(tmp_path / "syn")
    assert main(["data", "write", "synthetic", "--out", syn, "--num-samples", "12"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 12
    assert WebDatasetSource(str(tmp_path / "syn" / "shard-000000.tar")).num_samples() == 12
    missing = ["data", "write", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x")]
    assert main(missing) == 2
    assert "no such source" in capsys.readouterr().err
    (tmp_path / "odd.bin").write_bytes(b"x")
    assert main(["data", "write", str(tmp_path / "odd.bin"), "--out", str(tmp_path / "x")]) == 2
    assert "cannot tell" in capsys.readouterr().err
    assert main(["data", "stats", str(tmp_path / "syn"), "--limit", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 3


def test_error_records_carry_their_reason(tmp_path: Path) -> None:
    write_csv(tmp_path / "m.csv", [["nope.jpg", "x", ""]])
    record = next(CsvSource(tmp_path / "m.csv").scan())
    assert record.members[ERROR_MEMBER].startswith(b"missing-file")
