"""A photo library's metadata: EXIF capture time, place, camera and orientation read from
JPEG, HEIC and AVIF photos the test makes; filters by date, folder, camera and place applied
inside the search (k results whenever k images pass), sorting by date, in the library, the
CLI and the JSON API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

import cliplab
from cliplab.cli import main
from cliplab.data.exif import iso_time, photo_metadata
from cliplab.data.sources import spec_for_path
from cliplab.search.collection import Collection
from cliplab.search.embed import embed
from cliplab.search.filters import Filter
from cliplab.search.index import build_index
from cliplab.search.query import Searcher

pillow_heif = pytest.importorskip("pillow_heif", reason="HEIC photos need pillow-heif")
pillow_heif.register_heif_opener()
MODEL = "random:tiny-vit"
PARIS, SYDNEY = (48.8584, 2.2945), (-33.8568, 151.2153)


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = ((value - d) * 60 - m) * 60
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(round(s * 10000), 10000)


def photo(path: Path, seed: int, *, taken=None, gps=None, make=None, model=None,
          orientation=None, size=(60, 40)) -> None:  # fmt: skip
    """A photo with real EXIF, saved in the format its suffix names."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (3,))
    pixels = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if orientation:
        exif[0x0112] = orientation
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        g = exif.get_ifd(0x8825)
        g[1], g[2] = ("N" if gps[0] >= 0 else "S"), _dms(gps[0])
        g[3], g[4] = ("E" if gps[1] >= 0 else "W"), _dms(gps[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif.tobytes())


@pytest.fixture(scope="module")
def model():
    return cliplab.load(MODEL)


@pytest.fixture(scope="module")
def library(tmp_path_factory, model) -> Path:
    """40 photos: 2023 in Paris with a Canon (JPEG, some turned), 2024 in Sydney with an
    iPhone (HEIC), 2024 Pixel photos without a place (AVIF), screenshots without EXIF (PNG)."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(12):
        photo(root / "2023" / f"paris{i:02d}.jpg", i, taken=f"2023:07:{i + 1:02d} 10:00:00",
              gps=(PARIS[0] + i * 1e-3, PARIS[1]), make="Canon", model="EOS R5",
              orientation=6 if i % 3 == 0 else 1)  # fmt: skip
    for i in range(10):
        photo(root / "2024" / "sydney" / f"img{i:02d}.heic", 100 + i,
              taken=f"2024:01:{i + 1:02d} 08:30:00", gps=SYDNEY, make="Apple",
              model="iPhone 15 Pro")  # fmt: skip
    for i in range(8):
        photo(root / "2024" / f"pixel{i:02d}.avif", 200 + i,
              taken=f"2024:05:{i + 1:02d} 18:00:00", make="Google", model="Pixel 8")  # fmt: skip
    for i in range(10):
        photo(root / "shots" / f"shot{i:02d}.png", 300 + i)
    out = root.parent / (root.name + "-c")
    embed(spec_for_path(str(root)), out, *model, model_spec=MODEL, progress=False,
          log=lambda _: None, batch_size=16)  # fmt: skip
    return out


def test_exif_is_read_and_hostile_exif_gives_nothing(tmp_path: Path) -> None:
    photo(tmp_path / "a.jpg", 0, taken="2023:07:14 10:00:00", gps=(-33.5, -70.25),
          make="Canon\x00", model=" EOS R5 ", orientation=6)  # fmt: skip
    meta = photo_metadata((tmp_path / "a.jpg").read_bytes())
    assert meta == {"taken": "2023-07-14T10:00:00", "lat": -33.5, "lon": -70.25,
                    "make": "Canon", "model": "EOS R5", "orientation": 6}  # fmt: skip
    photo(tmp_path / "b.jpg", 1, taken="0000:00:00 00:00:00", gps=(95.0, 10.0), orientation=9)
    assert photo_metadata((tmp_path / "b.jpg").read_bytes()) == dict.fromkeys(meta)
    assert photo_metadata(b"not an image") == dict.fromkeys(meta)
    assert iso_time("2024:02:30 25:00:00") is None and iso_time(b"2024:02:03 04:05:06")


def test_the_collection_records_each_photos_metadata(library: Path) -> None:
    c = Collection(library)
    assert len(c) == 40
    rows = {r["key"]: r for r in c.metadata.to_pylist()}
    paris = rows["2023/paris00.jpg"]
    assert paris["taken"] == "2023-07-01T10:00:00" and paris["make"] == "Canon"
    assert paris["lat"] == pytest.approx(PARIS[0]) and paris["lon"] == pytest.approx(PARIS[1])
    # orientation 6: recorded, and the image was turned upright (60x40 stored -> 40x60)
    assert paris["orientation"] == 6 and (paris["width"], paris["height"]) == (40, 60)
    assert (rows["2023/paris01.jpg"]["width"], rows["2023/paris01.jpg"]["height"]) == (60, 40)
    heic = rows["2024/sydney/img03.heic"]
    assert heic["model"] == "iPhone 15 Pro" and heic["lat"] == pytest.approx(SYDNEY[0])
    assert rows["2024/pixel02.avif"]["taken"] == "2024-05-03T18:00:00"
    assert rows["2024/pixel02.avif"]["lat"] is None
    shot = rows["shots/shot00.png"]
    assert shot["taken"] is None and shot["mtime"] > 1e9 and shot["bytes"] > 0
    assert all(r["bytes"] == Path(r["path"]).stat().st_size for r in rows.values())


@pytest.mark.parametrize("use_index", [False, True])
def test_filters_apply_inside_the_search(library: Path, use_index: bool) -> None:
    if use_index:
        build_index(Collection(library), kind="hnsw")
    searcher = Searcher(library, use_index=use_index)
    query = searcher.embed_text("a photo")
    canon = Filter.parse(camera="canon")
    # the 12 Canon photos are not all in the unfiltered top 12, yet a filtered k=12 finds all
    top = searcher.nearest(query, 12)
    assert sum(h.camera == "Canon EOS R5" for h in top) < 12
    found = searcher.nearest(query, 12, where=canon)
    assert len(found) == 12 and {h.camera for h in found} == {"Canon EOS R5"}
    # best first among the ones that pass: the same order exact search over them gives
    vectors = Collection(library).image_embeddings()
    ids = [h.id for h in found]
    assert ids == sorted(ids, key=lambda i: -float(vectors[i] @ query))
    # k larger than the images that pass: all of them, no more
    assert len(searcher.nearest(query, 30, where=canon)) == 12
    sydney = searcher.nearest(query, 20, where=Filter.parse(near=f"{SYDNEY[0]},{SYDNEY[1]},5"))
    assert len(sydney) == 10 and all(h.key.startswith("2024/sydney/") for h in sydney)
    box = Filter.parse(bbox="48,2,49,3")
    assert {h.key[:10] for h in searcher.nearest(query, 40, where=box)} == {"2023/paris"}
    dated = searcher.nearest(query, 40, where=Filter.parse(after="2024-01-05", before="2024-05-03"))
    assert sorted(h.taken[:10] for h in dated) == [f"2024-01-{d:02d}" for d in range(5, 11)] + [
        "2024-05-01", "2024-05-02"]  # fmt: skip
    assert len(searcher.nearest(query, 40, where=Filter.parse(path="2024/*.avif"))) == 8
    assert len(searcher.nearest(query, 40, where=Filter.parse(path="2024/"))) == 18
    # sorted by date, newest first, among the k best
    by_date = searcher.nearest(query, 40, where=Filter.parse(after="2023-01-01"), sort="date")
    assert [h.taken for h in by_date] == sorted((h.taken for h in by_date), reverse=True)
    with pytest.raises(ValueError, match="sort"):
        searcher.nearest(query, 5, sort="random")


def test_filters_and_sort_in_the_cli(library: Path, capsys) -> None:
    assert main(["search", str(library), "a photo", "--camera", "iphone 15", "-k", "5",
                 "--sort", "oldest", "--json"]) == 0  # fmt: skip
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5 and all(h["camera"] == "Apple iPhone 15 Pro" for h in hits)
    assert [h["taken"] for h in hits] == sorted(h["taken"] for h in hits)
    # no query: the images that pass, newest first
    assert main(["search", str(library), "--bbox=-34,151,-33,152", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["key"] for h in hits] == [f"2024/sydney/img{i:02d}.heic" for i in (9, 8, 7)]
    assert main(["search", str(library), "--after", "2024-02-30"]) == 2
    assert "after must be a date" in capsys.readouterr().err
    assert main(["search", str(library), "--near", "1,2"]) == 2
    assert main(["search", str(library)]) == 2


def test_filters_in_the_api(library: Path) -> None:
    from fastapi.testclient import TestClient

    from cliplab.serve import create_app

    client = TestClient(create_app(Searcher(library)))
    got = client.get("/search", params={"q": "a photo", "k": 5, "camera": "pixel"}).json()
    assert len(got["results"]) == 5 and got["filters"] == {"camera": "pixel"}
    assert {r["camera"] for r in got["results"]} == {"Google Pixel 8"}
    listed = client.get("/search", params={"path": "2023/", "sort": "oldest", "k": 3}).json()
    assert [r["key"] for r in listed["results"]] == [f"2023/paris{i:02d}.jpg" for i in range(3)]
    with open(Collection(library).row(0)["path"], "rb") as f:
        image = f.read()
    posted = client.post("/search", files={"image": ("a.jpg", image)},
                         data={"k": "4", "after": "2024-01-01", "sort": "date"}).json()  # fmt: skip
    assert len(posted["results"]) == 4
    assert all(r["taken"] >= "2024-01-01" for r in posted["results"])
    assert [r["taken"] for r in posted["results"]] == sorted(
        (r["taken"] for r in posted["results"]), reverse=True
    )
    assert client.get("/search", params={"q": "x", "near": "0,0,-1"}).status_code == 400
