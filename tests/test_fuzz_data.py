"""Fuzz: shards full of hostile samples. Nothing crashes, every bad sample is counted under
the reason it was built to trigger (exact counts, read directly and through a 2-worker
``StreamingLoader``), and every good sample comes through.

The set (seeded, about 1,700 records in 10 shards plus one unreadable one), by construction:
truncated JPEGs and PNGs, random bytes, zero-byte images, text renamed ``.png``,
decompression bombs (PNG headers declaring 50000x50000 and 12000x12000, no pixel data),
1xN strips, 4x4 specks, samples without an image, 1 MB captions (good: cut, not rejected),
empty / whitespace / non-UTF-8 / missing captions, malformed JSON, member names without an
extension or starting with a dot, symlinks, directories (ignored), unicode and spaces in
names (good), the same key twice in a row, the same key in two shards (both good), two
shards cut off mid-member, and a shard that is not a tar at all.
"""

from __future__ import annotations

import io
import random
import struct
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliplab
from cliplab.augment import Augment
from cliplab.data import ImageTextStream, StreamingLoader
from cliplab.data.decode import ImageDecoder
from cliplab.data.stream import BadSample, RawSample
from cliplab.data.webdataset import WebDatasetSource

NUM_SHARDS = 10
# magic numbers of the formats the decoder opens: random bytes must not start with one
MAGICS = (b"\xff\xd8", b"\x89PNG", b"RIFF", b"GIF8", b"BM", b"II*\0", b"MM\0*", b"\0\0\1\0", b"P")


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width x height`` with no pixel data: a bomb built without allocating."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@dataclass
class Entry:
    """One thing written to a shard: tar members, and what reading + decoding must say."""

    key: str
    members: list[tuple[str, bytes]] = field(default_factory=list)
    label: str = "ok"  # "ok" or the exact reason
    kind: str = "file"  # "file", "symlink" or "dir"


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.entries: list[Entry] = []
        self.count = 0

    def key(self) -> str:
        self.count += 1
        return f"s{self.count:05d}"

    def noise(self, low: int = 16, high: int = 48, mode: str = "RGB") -> Image.Image:
        w, h = self.rng.randint(low, high), self.rng.randint(low, high)
        image = Image.fromarray(self.np.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        return image.convert(mode)

    def good_image(self) -> tuple[str, bytes]:
        fmt, ext, mode = self.rng.choice(
            [
                ("JPEG", "jpg", "RGB"),
                ("PNG", "png", "RGBA"),
                ("PNG", "png", "L"),
                ("WEBP", "webp", "RGB"),
                ("GIF", "gif", "P"),
            ]
        )
        return ext, encode(self.noise(mode=mode), fmt)

    def caption(self) -> bytes:
        return f"a photo of thing number {self.rng.randint(0, 10**6)}".encode()

    def add(
        self,
        label: str,
        image: tuple[str, bytes] | None,
        caption: bytes | None = None,
        extra=(),
        key=None,
    ) -> None:
        key = key or self.key()
        members = []
        if image is not None:
            members.append((f"{key}.{image[0]}", image[1]))
        if caption is not None:
            members.append((f"{key}.txt", caption))
        members += [(f"{key}.{ext}", data) for ext, data in extra]
        self.entries.append(Entry(key, members, label))

    def truncated_jpeg(self) -> bytes:
        data = encode(self.noise(32, 64), "JPEG")
        start = data.index(b"\xff\xda") + 40  # inside the entropy-coded scan
        return data[: self.rng.randint(start, len(data) - 40)]

    def truncated_png(self) -> bytes:
        data = encode(self.noise(32, 64), "PNG")
        start = data.index(b"IDAT") + 60
        return data[: self.rng.randint(start, len(data) - 40)]

    def random_bytes(self) -> bytes:
        while True:
            data = self.rng.randbytes(self.rng.randint(1, 4000))
            if not data.startswith(MAGICS):
                return data


def build(seed: int = 0) -> Builder:
    b = Builder(seed)
    good = b.good_image
    for _ in range(600):
        b.add("ok", good(), b.caption())
    # images
    for _ in range(160):
        b.add("truncated-image", ("jpg", b.truncated_jpeg()), b.caption())
    for _ in range(160):
        b.add("truncated-image", ("png", b.truncated_png()), b.caption())
    for _ in range(150):
        b.add("not-an-image", (b.rng.choice(["jpg", "png", "webp"]), b.random_bytes()), b.caption())
    for _ in range(60):
        b.add("zero-bytes", (b.rng.choice(["jpg", "png"]), b""), b.caption())
    for i in range(60):
        b.add(
            "not-an-image",
            ("png", f"Dear diary, day {i}.\nNothing happened.\n".encode()),
            b.caption(),
        )
    for _ in range(40):
        b.add("decompression-bomb", ("png", png_header(50_000, 50_000)), b.caption())
    for _ in range(20):
        b.add("decompression-bomb", ("png", png_header(12_000, 12_000)), b.caption())
    for i in range(50):
        size = (1, 20_000) if i % 2 else (b.rng.randint(500, 20_000), 1)
        b.add("bad-aspect-ratio", ("png", encode(Image.new("L", size), "PNG")), b.caption())
    for _ in range(30):
        b.add("too-small", ("png", encode(b.noise(2, 7), "PNG")), b.caption())
    for _ in range(40):
        b.add("no-image", None, b.caption(), extra=[("json", b'{"caption": "orphan"}')])
    # captions
    for i in range(10):
        b.add("ok", good(), (f"huge{i} " * 200_000)[:1_000_000].encode())  # 1 MB: cut, not rejected
    for _ in range(40):
        b.add("empty-caption", good(), b"")
    for _ in range(40):
        b.add(
            "empty-caption", good(), b.rng.choice([b" ", b"\n\n", b"\t \r\n", "\u3000 ".encode()])
        )
    for _ in range(60):
        b.add("non-utf8-caption", good(), b"caf\xe9 " + b.rng.randbytes(8) + b"\xff")
    for _ in range(60):
        b.add("missing-caption", good(), None)
    for _ in range(20):
        b.add("malformed-json", good(), None, extra=[("json", b'{"caption": "unterminated')])
    for _ in range(30):
        b.add(
            "ok", good(), None, extra=[("json", b'{"captions": ["one way to say it", "another"]}')]
        )
    # tar members
    for i in range(15):
        b.entries.append(
            Entry(f"README_{i}", [(f"README_{i}", b"no extension")], "malformed-member")
        )
        b.entries.append(
            Entry(
                f".hidden{i}.jpg",
                [(f".hidden{i}.jpg", encode(b.noise(), "JPEG"))],
                "malformed-member",
            )
        )
    for i in range(10):
        b.entries.append(
            Entry(f"link{i}.jpg", [(f"link{i}.jpg", b"")], "malformed-member", kind="symlink")
        )
        b.entries.append(Entry(f"folder{i}", [(f"folder{i}", b"")], "ignored", kind="dir"))
    for i in range(20):
        b.add("ok", good(), b.caption(), key=f"ünï cödé {i} (copy)")
    for _ in range(30):
        key = b.key()
        ext, data = good()
        members = [
            (f"{key}.{ext}", data),
            (f"{key}.txt", b"first"),
            (f"{key}.{ext}", data),
            (f"{key}.txt", b"second"),
        ]
        b.entries.append(Entry(key, members, "duplicate-key"))
    return b


def write_shards(directory: Path, builder: Builder) -> tuple[list[str], dict[str, str], Counter]:
    """Shards with the entries spread at random, two of them cut off inside their last sample,
    a repeated key in two shards, and an unreadable one. Returns (urls, label by key, counts)."""
    rng = random.Random(1)
    entries = list(builder.entries)
    rng.shuffle(entries)
    shards: list[list[Entry]] = [entries[i::NUM_SHARDS] for i in range(NUM_SHARDS)]
    for i in range(10):  # the same key in two different shards: two separate, good samples
        key = f"again{i}"
        for shard in (shards[i % NUM_SHARDS], shards[(i + 1) % NUM_SHARDS]):
            shard.insert(
                0,
                Entry(
                    key, [(f"{key}.png", encode(builder.noise(), "PNG")), (f"{key}.txt", b"twice")]
                ),
            )
    for s in (3, 7):  # these two get cut off inside this last sample
        key = f"cut{s}"
        members = [(f"{key}.jpg", encode(builder.noise(40, 48), "JPEG")), (f"{key}.txt", b"lost")]
        shards[s].append(Entry(key, members))
    labels: dict[str, str] = {}
    counts: Counter = Counter()
    urls = []
    for s, shard in enumerate(shards):
        path = directory / f"fuzz-{s:02d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for entry in shard:
                for name, data in entry.members:
                    info = tarfile.TarInfo(name)
                    if entry.kind == "symlink":
                        info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.jpg"
                    elif entry.kind == "dir":
                        info.type = tarfile.DIRTYPE
                    else:
                        info.size = len(data)
                    tar.addfile(info, io.BytesIO(data) if entry.kind == "file" else None)
        last = shard[-1]
        if s in (3, 7):  # cut inside the last sample's first member: "truncated-tar", once
            with tarfile.open(path) as tar:
                member = tar.getmember(last.members[0][0])
            data = path.read_bytes()
            path.write_bytes(data[: member.offset_data + member.size // 2])
            last.label = "truncated-tar"
        for entry in shard:
            if entry.label != "ignored":
                labels[entry.key] = entry.label
                counts[entry.label] += 1
        urls.append(str(path))
    garbage = directory / "fuzz-99.tar"
    garbage.write_bytes(b"\x00garbage, not a tar " * 100)
    urls.append(str(garbage))
    labels[str(garbage)] = "unreadable-shard"
    counts["unreadable-shard"] += 1
    return urls, labels, counts


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory):
    builder = build()
    urls, labels, counts = write_shards(tmp_path_factory.mktemp("fuzz"), builder)
    return urls, labels, counts


def outcome(decoder: ImageDecoder, record: RawSample) -> tuple[str, str | None]:
    try:
        _, caption = decoder(record, random.Random(0))
    except BadSample as e:
        return e.reason, None
    return "ok", caption


def test_the_fuzz_set_is_big_enough(fuzz) -> None:
    _, _, counts = fuzz
    hostile = sum(n for label, n in counts.items() if label != "ok") + 10  # + the 1 MB captions
    assert hostile >= 1000
    assert counts["ok"] >= 600 and len(counts) >= 15


def test_every_record_decodes_or_is_counted_exactly(fuzz) -> None:
    urls, labels, counts = fuzz
    decoder = ImageDecoder(image_size=16)
    seen: Counter = Counter()
    for record in WebDatasetSource(urls).scan():
        reason, caption = outcome(decoder, record)
        assert reason == labels[record.key], record.key
        if caption is not None:
            assert 0 < len(caption) <= 1000
        seen[reason] += 1
    assert seen == counts


def tokenize(captions: list[str]) -> torch.Tensor:
    return cliplab.tokenize(captions, context_length=16, truncate=True)


def test_through_the_streaming_loader_with_workers(fuzz) -> None:
    urls, labels, counts = fuzz
    source = WebDatasetSource(urls, name="fuzz")
    batch_size, buffer = 16, 40
    # long enough that each worker's stream gets through its whole share at least once
    batches = (counts["ok"] * 3 // 2) // batch_size
    stream = ImageTextStream(
        [source],
        ImageDecoder(image_size=16),
        Augment(),
        tokenize,
        batch_size,
        image_size=16,
        seed=5,
        shuffle_buffer=buffer,
        batches_per_epoch=batches,
    )
    loader = StreamingLoader(stream, num_workers=2)
    keys: Counter = Counter()
    skipped: Counter = Counter()
    positions: dict[int, int] = {}
    for batch in loader.iter_epoch():
        assert batch.images.shape == (batch_size, 3, 16, 16) and batch.tokens.shape == (
            batch_size,
            16,
        )
        keys.update(batch.keys)
        skipped.update(batch.skipped)
        positions[batch.stream] = batch.position
    assert sum(keys.values()) == batches * batch_size and len(positions) == 2
    # replay exactly the records each stream consumed (through the same shuffle buffer):
    # their labels say what must have happened
    expected_keys: Counter = Counter()
    expected_skipped: Counter = Counter()
    stream.epoch = 0
    for index, position in positions.items():
        raw = stream._raw_stream(index, 2)
        for _ in range(position):
            record = next(raw)
            label = labels[record.key]
            if label == "ok":
                expected_keys[record.key] += 1
            else:
                expected_skipped[label] += 1
    assert skipped == expected_skipped and keys == expected_keys
    assert set(skipped) == set(counts) - {"ok"}  # every kind of bad input was met and counted
    good = {key for key, label in labels.items() if label == "ok"}
    assert set(keys) == good  # and every good sample came through


def test_random_mutations_never_crash() -> None:
    """Bytes flipped, cut or inserted in valid images of every format: only BadSample or a
    valid RGB image, never another exception (no counts: what a mutation breaks varies)."""
    rng = random.Random(2)
    builder = Builder(3)
    decoder = ImageDecoder(image_size=16)
    results: Counter = Counter()
    for i in range(400):
        fmt = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "PPM")[i % 8]
        data = bytearray(encode(builder.noise(8, 40, "RGB"), fmt))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(3)
            if op == 0:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and len(data) > 1:
                del data[rng.randrange(1, len(data)) :]
            elif op == 2:
                at = rng.randrange(len(data))
                data[at:at] = rng.randbytes(rng.randint(1, 20))
        reason, _ = outcome(decoder, RawSample("m", {"img": bytes(data), "txt": b"x"}))
        results[reason] += 1
    assert sum(results.values()) == 400 and results["ok"] < 400
