"""WebDataset shards: brace patterns, the writer (atomic, stats, byte-identical), reading
img2dataset-style shards, malformed tars, the split across streams, and exact resume through
``StreamingLoader`` with bad samples."""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliplab
from cliplab.augment import Augment
from cliplab.data import ImageTextStream, StreamingLoader
from cliplab.data.decode import ERROR_MEMBER, ImageDecoder
from cliplab.data.shardwriter import ShardWriter
from cliplab.data.sources import build_source
from cliplab.data.webdataset import (
    ShardIndex,
    WebDatasetSource,
    expand_urls,
    iter_tar_records,
    stream_share,
)


def jpeg(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def reasons(records) -> Counter:
    return Counter(
        r.members[ERROR_MEMBER].decode().split("\n")[0]
        for r in records
        if ERROR_MEMBER in r.members
    )


# --------------------------------------------------------------------------- brace patterns


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("data/{00000..00002}.tar", ["data/00000.tar", "data/00001.tar", "data/00002.tar"]),
        ("s-{8..11}.tar", ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]),
        ("s-{08..10}.tar", ["s-08.tar", "s-09.tar", "s-10.tar"]),
        ("{2..0}", ["2", "1", "0"]),
        ("{a,b}/{0..1}.tar", ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]),
        ("x{a,b{1..2}}y", ["xay", "xb1y", "xb2y"]),
        ("plain.tar", ["plain.tar"]),
        ("a.tar::b{0..1}.tar", ["a.tar", "b0.tar", "b1.tar"]),
        (["p{0..1}", "q"], ["p0", "p1", "q"]),
    ],
)
def test_expand_urls(pattern, expected) -> None:
    assert expand_urls(pattern) == expected


@pytest.mark.parametrize(
    "pattern", ["a{0..}", "a{0..2", "a}b{", "x{}", "x{abc}", "x{1..b}", "a0..2}", ""]
)
def test_expand_urls_malformed(pattern) -> None:
    with pytest.raises(ValueError):
        expand_urls(pattern)


def test_expand_urls_100_shards() -> None:
    urls = expand_urls("data/{00000..00099}.tar")
    assert len(urls) == 100 and urls[0] == "data/00000.tar" and urls[-1] == "data/00099.tar"


# --------------------------------------------------------------------------- writer


def test_writer_round_trip_and_stats(tmp_path: Path) -> None:
    images = [jpeg(i) for i in range(7)]
    with ShardWriter(tmp_path, prefix="part", max_samples=3) as writer:
        for i, image in enumerate(images):
            writer.write(
                f"{i:04d}", {"jpg": image, "txt": f"caption {i}", "json": {"i": i, "word": "é"}}
            )
            if i == 4:
                writer.fail("not-an-image")
        writer.fail("missing-caption", 2)
    summary = writer.close()  # idempotent
    assert summary["samples"] == 7 and summary["failures"] == {
        "missing-caption": 2,
        "not-an-image": 1,
    }
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        f"part-00000{i}.{ext}" for i in range(3) for ext in ("json", "tar")
    ]  # no temp files
    stats = [json.loads((tmp_path / f"part-00000{i}.json").read_text()) for i in range(3)]
    assert [s["samples"] for s in stats] == [3, 3, 1]
    assert [s["failures"] for s in stats] == [{}, {"not-an-image": 1}, {"missing-caption": 2}]
    assert stats[0]["bytes"] == (tmp_path / "part-000000.tar").stat().st_size
    source = WebDatasetSource(str(tmp_path / "part-{000000..000002}.tar"))
    assert source.num_samples() == 7
    records = list(source.scan())
    assert [r.key for r in records] == [f"{i:04d}" for i in range(7)]
    assert all(r.members["jpg"] == images[i] for i, r in enumerate(records))
    assert records[2].members["txt"] == b"caption 2"
    assert json.loads(records[2].members["json"]) == {"i": 2, "word": "é"}
    image, caption = ImageDecoder()(records[5], random.Random(0))
    assert caption == "caption 5" and image.size == (24, 20)


def test_writer_is_deterministic_and_splits_by_bytes(tmp_path: Path) -> None:
    for out in ("a", "b"):
        with ShardWriter(tmp_path / out, max_bytes=8000) as writer:
            for i in range(6):
                writer.write(str(i), {"bin": bytes(2000), "txt": "x"})
    a, b = sorted((tmp_path / "a").glob("*.tar")), sorted((tmp_path / "b").glob("*.tar"))
    assert len(a) == 3 and [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


@pytest.mark.parametrize("key", ["", "a/b", "a.b", "x\0y"])
def test_writer_rejects_unsafe_keys(tmp_path: Path, key: str) -> None:
    with ShardWriter(tmp_path) as writer, pytest.raises(ValueError):
        writer.write(key, {"txt": "x"})


def test_writer_rejects_bad_members_and_repeated_keys(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path)
    with pytest.raises(ValueError):
        writer.write("k", {})
    with pytest.raises(ValueError):
        writer.write("k", {".jpg": b"x"})
    with pytest.raises(TypeError):
        writer.write("k", {"txt": 3})  # type: ignore[dict-item]
    writer.write("k", {"txt": "x"})
    with pytest.raises(ValueError, match="twice"):
        writer.write("k", {"txt": "y"})
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write("z", {"txt": "x"})


def test_writer_aborts_on_error_leaving_finished_shards(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_samples=2) as writer:
        for i in range(3):
            writer.write(str(i), {"txt": "x"})
        raise RuntimeError("builder crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.json", "shard-000000.tar"]


def test_writer_keeps_failures_without_samples(tmp_path: Path) -> None:
    with ShardWriter(tmp_path) as writer:
        writer.fail("not-an-image", 3)
    stats = json.loads((tmp_path / "shard-000000.json").read_text())
    assert stats["samples"] == 0 and stats["failures"] == {"not-an-image": 3}
    source = WebDatasetSource(str(tmp_path / "shard-000000.tar"))
    assert list(source.scan()) == [] and source.num_samples() == 0


# --------------------------------------------------------------------------- reading


def test_reads_img2dataset_layout(tmp_path: Path) -> None:
    members = []
    for i in range(4):
        key = f"0000{i:05d}"
        members += [(f"{key}.jpg", jpeg(i)), (f"{key}.txt", f"a photo {i}".encode())]
        members.append(
            (
                f"{key}.json",
                json.dumps({"url": f"http://x/{i}.jpg", "caption": f"a photo {i}"}).encode(),
            )
        )
    write_tar(tmp_path / "00000.tar", members)
    (tmp_path / "00000_stats.json").write_text(
        json.dumps({"count": 5, "successes": 4, "failed_to_download": 1})
    )
    source = WebDatasetSource(str(tmp_path / "{00000..00000}.tar"), name="laion")
    assert source.num_samples() == 4
    records = list(source.scan())
    assert [r.key for r in records] == [f"0000{i:05d}" for i in range(4)]
    assert all(set(r.members) == {"jpg", "txt", "json"} and r.source == "laion" for r in records)
    decoder = ImageDecoder(image_size=16)
    image, caption = decoder(records[3], random.Random(0))
    assert caption == "a photo 3" and min(image.size) == 16


def test_groups_members_like_webdataset(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "s.tar",
        [
            ("dir/sub/a.JPG", b"1"),
            ("dir/sub/a.txt", b"2"),
            ("dir/sub/a.seg.png", b"3"),
            ("b.jpg", b"4"),
            ("dir/sub/a.txt", b"5"),  # the key again, not consecutive: a separate sample
        ],
    )
    records = list(WebDatasetSource(str(tmp_path / "s.tar")).scan())
    assert [(r.key, sorted(r.members)) for r in records] == [
        ("dir/sub/a", ["jpg", "seg.png", "txt"]),
        ("b", ["jpg"]),
        ("dir/sub/a", ["txt"]),
    ]


def test_counts_samples_by_scanning_headers_without_stats(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", [(f"{i}.{e}", b"x") for i in range(5) for e in ("jpg", "txt")])
    write_tar(tmp_path / "b.tar", [(f"{i}.{e}", b"x") for i in range(3) for e in ("jpg", "txt")])
    assert WebDatasetSource([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]).num_samples() == 8
    assert WebDatasetSource(str(tmp_path / "a.tar"), num_samples=100).num_samples() == 100


def test_malformed_tars_become_counted_error_records(tmp_path: Path) -> None:
    members = [
        (f"{i:03d}.{e}", jpeg(i) if e == "jpg" else b"caption")
        for i in range(6)
        for e in ("jpg", "txt")
    ]
    write_tar(tmp_path / "good.tar", members)
    data = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut-in-data.tar").write_bytes(data[: len(data) // 2 + 100])
    end = len(data.rstrip(b"\0"))  # the end of the last member's data
    (tmp_path / "cut-in-header.tar").write_bytes(data[: (end + 511) // 512 * 512 + 200])
    (tmp_path / "no-end-blocks.tar").write_bytes(data[: (end + 511) // 512 * 512])
    (tmp_path / "garbage.tar").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty.tar").write_bytes(b"")
    for name, good, expected in [
        ("good.tar", 6, {}),
        ("cut-in-data.tar", None, {"truncated-tar": 1}),
        ("cut-in-header.tar", 5, {"truncated-tar": 1}),
        ("no-end-blocks.tar", 5, {"truncated-tar": 1}),
        ("garbage.tar", 0, {"unreadable-shard": 1}),
        ("empty.tar", 0, {"unreadable-shard": 1}),
        ("missing.tar", 0, {"unreadable-shard": 1}),
    ]:
        records = list(WebDatasetSource(str(tmp_path / name)).scan())
        assert reasons(records) == expected, name
        ok = [r for r in records if ERROR_MEMBER not in r.members]
        assert all(set(r.members) == {"jpg", "txt"} for r in ok), name
        if good is not None:
            assert len(ok) == good, name


def test_odd_members(tmp_path: Path) -> None:
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("a.jpg", b"1"),
            ("a.txt", b"2"),
            ("README", b"r"),
            (".hidden.jpg", b"h"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        tar.addfile(link)
        for name, data in [("b.jpg", b"3"), ("b.jpg", b"4"), ("c.txt", b"5")]:  # b twice in a row
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    records = list(WebDatasetSource(str(path)).scan())
    assert reasons(records) == {"malformed-member": 3, "duplicate-key": 1}
    assert [r.key for r in records if ERROR_MEMBER not in r.members] == ["a", "c"]


def test_compressed_and_piped_shards(tmp_path: Path) -> None:
    write_tar(tmp_path / "s.tar", [(f"{i}.txt", b"x") for i in range(3)])
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress((tmp_path / "s.tar").read_bytes()))
    assert [r.key for r in WebDatasetSource(str(tmp_path / "s.tar.gz")).scan()] == ["0", "1", "2"]
    piped = WebDatasetSource(f"pipe:cat {tmp_path / 's.tar'}", num_samples=3)
    assert [r.key for r in piped.scan()] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="num_samples"):
        WebDatasetSource(f"pipe:cat {tmp_path / 's.tar'}").num_samples()


def test_shard_index_reads_members_back_by_key(tmp_path: Path) -> None:
    """A sample's members read back by key and byte range equal what streaming gives, under
    the same key rules; a compressed shard is read through; bad shards are clear errors."""
    members = [
        ("dir/sub/a.JPG", jpeg(1)),
        ("dir/sub/a.txt", b"first"),
        ("dir/sub/a.seg.png", b"mask"),
        ("b.jpg", jpeg(2)),
        ("dir/sub/a.txt", b"later"),  # the key again, not consecutive: the first sample wins
        ("c.png", jpeg(3)),
    ]
    write_tar(tmp_path / "s.tar", members)
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress((tmp_path / "s.tar").read_bytes()))
    index = ShardIndex(size=1)
    for url in (str(tmp_path / "s.tar"), str(tmp_path / "s.tar.gz")):
        streamed = {r.key: r.members for r in reversed(list(iter_tar_records(url)))}
        for key in ("dir/sub/a", "b"):
            ext, data = index.read_member(url, key, ("png", "jpg", "txt"))
            assert data == streamed[key][ext] and ext == "jpg"
        assert index.read_member(url, "dir/sub/a", ("txt",)) == ("txt", b"first")
        assert index.read_member(url, "dir/sub/a", ("seg.png",)) == ("seg.png", b"mask")
        assert index.read_member(url, "c", ("jpg", "png")) == ("png", jpeg(3))
        assert index.read_member(url, "nope", ("jpg",)) is None
        assert index.read_member(url, "b", ("txt",)) is None
    assert set(index.table(str(tmp_path / "s.tar"))) == {"dir/sub/a", "b", "c"}
    assert len(index._tables) == 1  # LRU of one shard
    (tmp_path / "garbage.tar").write_bytes(bytes(range(256)) * 8)
    for url in (tmp_path / "garbage.tar", tmp_path / "missing.tar"):
        with pytest.raises(OSError):
            index.read_member(str(url), "a", ("jpg",))
    with pytest.raises(ValueError, match="pipe"):
        index.read_member(f"pipe:cat {tmp_path / 's.tar'}", "b", ("jpg",))
    with tarfile.open(tmp_path / "s.tar") as tar:
        b_at = tar.getmember("b.jpg").offset_data
    (tmp_path / "cut.tar").write_bytes((tmp_path / "s.tar").read_bytes()[: b_at + 100])
    with pytest.raises(OSError, match="cut short"):
        ShardIndex().read_member(str(tmp_path / "cut.tar"), "b", ("jpg",))
    assert ShardIndex().read_member(str(tmp_path / "cut.tar"), "dir/sub/a", ("txt",)) == (
        "txt",
        b"first",
    )


# --------------------------------------------------------------------------- splitting


def make_shards(directory: Path, counts: list[int]) -> list[str]:
    urls = []
    for s, count in enumerate(counts):
        path = directory / f"shard-{s:06d}.tar"
        write_tar(path, [(f"s{s}k{i}.txt", b"x") for i in range(count)])
        urls.append(str(path))
    return urls


@pytest.mark.parametrize("num_streams", [1, 2, 3, 5, 7, 12])
def test_split_across_streams_is_disjoint_and_complete(tmp_path: Path, num_streams: int) -> None:
    urls = make_shards(tmp_path, [4, 7, 1, 5, 6])
    source = WebDatasetSource(urls)
    everything = [r.key for r in source.scan()]
    seen: list[str] = []
    for stream in range(num_streams):
        units, stride, offset = stream_share(len(urls), stream, num_streams)
        share = [
            r.key
            for u in units
            for i, r in enumerate(source.records(urls[u]))
            if i % stride == offset
        ]
        it = source.iter_raw(seed=3, epoch=1, stream=stream, num_streams=num_streams)
        first_pass = [next(it).key for _ in share]
        assert sorted(first_pass) == sorted(share)
        seen += first_pass
    assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen))


def test_passes_reshuffle_shards_and_are_deterministic(tmp_path: Path) -> None:
    source = WebDatasetSource(make_shards(tmp_path, [2] * 8))

    def passes(seed: int, epoch: int) -> list[list[str]]:
        it = source.iter_raw(seed, epoch, 0, 1)
        return [[next(it).key for _ in range(16)] for _ in range(3)]

    a = passes(0, 0)
    assert a == passes(0, 0)
    assert all(sorted(p) == sorted(a[0]) for p in a) and len({tuple(p) for p in a}) == 3
    assert passes(0, 1) != a and passes(1, 0) != a


def test_more_streams_than_samples_share_the_source(tmp_path: Path) -> None:
    source = WebDatasetSource(make_shards(tmp_path, [2]))
    it = source.iter_raw(0, 0, stream=3, num_streams=4)  # its stride share is empty
    assert {next(it).key for _ in range(4)} == {"s0k0", "s0k1"}


def test_a_share_with_no_good_record_raises_instead_of_spinning(tmp_path: Path) -> None:
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    it = WebDatasetSource(str(tmp_path / "bad.tar")).iter_raw(0, 0, 0, 1)
    assert ERROR_MEMBER in next(it).members
    with pytest.raises(ValueError, match="malformed"):
        next(it)


def test_build_source_webdataset(tmp_path: Path) -> None:
    urls = make_shards(tmp_path, [3, 3])
    source = build_source(
        {"kind": "webdataset", "urls": str(tmp_path / "shard-{000000..000001}.tar"), "weight": 2}
    )
    assert (
        isinstance(source, WebDatasetSource) and source.urls == urls and source.num_samples() == 6
    )


# --------------------------------------------------------------------------- loader


def tokenize(captions: list[str]) -> torch.Tensor:
    return cliplab.tokenize(captions, context_length=16, truncate=True)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 shards of 30 samples, every 5th one bad in some way."""
    directory = tmp_path_factory.mktemp("shards")
    bad = [
        {"jpg": b"", "txt": "zero bytes"},
        {"jpg": b"not an image", "txt": "text"},
        {"jpg": jpeg(0)[:200], "txt": "truncated"},
        {"jpg": jpeg(0), "txt": "   "},
        {"jpg": jpeg(0)},
    ]
    with ShardWriter(directory, max_samples=30) as writer:
        for i in range(180):
            members = (
                bad[(i // 5) % 5] if i % 5 == 4 else {"jpg": jpeg(i), "txt": f"photo number {i}"}
            )
            writer.write(f"{i:05d}", members)
    return directory


def make_loader(shard_dir: Path, workers: int) -> StreamingLoader:
    source = WebDatasetSource(str(shard_dir / "shard-{000000..000005}.tar"))
    stream = ImageTextStream(
        [source],
        ImageDecoder(image_size=16),
        Augment(),
        tokenize,
        batch_size=6,
        image_size=16,
        seed=7,
        shuffle_buffer=10,
    )
    return StreamingLoader(stream, num_workers=workers)


def take(loader: StreamingLoader, n: int) -> list:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_with_shards_and_bad_samples(shard_dir: Path, workers: int) -> None:
    loader = make_loader(shard_dir, workers)
    assert len(loader) == 30  # 180 samples by the stats JSONs / batch 6
    full = take(loader, 36)  # into the second epoch
    skipped = Counter()
    for batch in full[:30]:
        skipped.update(batch.skipped)
    assert sum(skipped.values()) > 0 and set(skipped) <= {
        "zero-bytes",
        "not-an-image",
        "truncated-image",
        "empty-caption",
        "missing-caption",
    }
    for stop in (5, 33):
        first = make_loader(shard_dir, workers)
        head = take(first, stop)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = make_loader(shard_dir, workers)
        resumed.load_state_dict(state)
        tail = take(resumed, 36 - stop)
        for a, b in zip(full, head + tail):
            assert (
                a.keys == b.keys
                and torch.equal(a.images, b.images)
                and torch.equal(a.tokens, b.tokens)
            )
            assert a.skipped == b.skipped
