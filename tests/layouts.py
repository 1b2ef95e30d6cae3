"""Evaluation sets written in the layouts people keep them in (CLIP_benchmark's WebDataset
layout, ImageFolder, CSV/Parquet, Karpathy JSON), for the layout and parity tests."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def picture(label: int, seed: int, size: int = 40) -> Image.Image:
    """A picture whose colour and shape depend on its class, with noise of its own."""
    rng = np.random.default_rng(seed)
    hue = np.array([(37 * label) % 256, (91 * label + 40) % 256, (151 * label + 80) % 256])
    pixels = np.clip(hue + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    r = 6 + label
    draw.ellipse(
        (size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r), fill=tuple(255 - hue)
    )
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def samples(n: int, classes: int = len(CLASSES), seed: int = 0) -> list[tuple[Image.Image, int]]:
    return [(picture(i % classes, seed * 10_000 + i), i % classes) for i in range(n)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds(root: Path, items: list[tuple[Image.Image, int]], *, split: str = "test",
              shard_size: int = 25, classnames: list[str] | None = CLASSES,
              templates: list[str] | None = None) -> Path:  # fmt: skip
    """CLIP_benchmark's layout: ``split/{0..N-1}.tar`` of ``key.png`` + ``key.cls``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    for s, chunk in enumerate(shards):
        with tarfile.open(root / split / f"{s}.tar", "w") as tar:
            for j, (image, label) in enumerate(chunk):
                key = f"s{s:04d}{j:06d}"
                _add(tar, f"{key}.png", png(image))
                _add(tar, f"{key}.cls", str(label).encode())
    (root / split / "nshards.txt").write_text(str(len(shards)))
    if classnames is not None:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return root


def write_wds_retrieval(root: Path, items: list[tuple[Image.Image, list[str]]],
                        split: str = "test") -> Path:  # fmt: skip
    (root / split).mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / split / "0.tar", "w") as tar:
        for j, (image, captions) in enumerate(items):
            _add(tar, f"{j:06d}.png", png(image))
            _add(tar, f"{j:06d}.txt", "\n".join(captions).encode())
    (root / split / "nshards.txt").write_text("1")
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


def write_imagefolder(root: Path, items: list[tuple[Image.Image, int]],
                      folders: list[str] | None = None) -> Path:  # fmt: skip
    folders = folders or CLASSES
    for i, (image, label) in enumerate(items):
        (root / folders[label]).mkdir(parents=True, exist_ok=True)
        image.save(root / folders[label] / f"img{i:05d}.png")
    return root


def write_table(path: Path, items: list[tuple[Image.Image, int]], names: bool = False) -> Path:
    """``path`` (.csv or .parquet) of ``path,label`` with the images in ``images/`` beside it;
    ``names``: labels written as class names."""
    folder = path.parent
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(items):
        image.save(folder / "images" / f"{i:05d}.png")
        rows.append({"path": f"images/{i:05d}.png", "label": CLASSES[label] if names else label})
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return path


def write_karpathy(folder: Path, items: list[tuple[Image.Image, list[str]]],
                   dataset: str = "flickr30k") -> Path:  # fmt: skip
    """A Karpathy-split JSON: the first items ``test``, one ``train`` image after them."""
    (folder / "flickr30k-images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, (image, captions) in enumerate(items):
        name = f"{1000 + i}.png"
        image.save(folder / "flickr30k-images" / name)
        images.append({"filename": name, "imgid": i, "split": "test",
                       "sentences": [{"raw": c, "tokens": c.split()} for c in captions]})  # fmt: skip
    images.append({"filename": "missing.png", "split": "train", "sentences": [{"raw": "x"}]})
    path = folder / f"dataset_{dataset}.json"
    path.write_text(json.dumps({"images": images, "dataset": dataset}))
    return path
