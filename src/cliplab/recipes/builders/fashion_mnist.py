"""Fashion-MNIST (Zalando, MIT): 28x28 grey product photos in 10 classes.

- ``eval/fashion-mnist-test``: the 10,000 test images, classified zero-shot among the 10
  class names (the paper's kind of task: no training label is used);
- ``shards/fashion-mnist-train``: the 60,000 training images with class-name captions, for
  linear probes or supervised runs. A model that trains on them is no longer zero-shot on
  the test set; the demo leaves them out.
The IDX files are read directly (gzip, big-endian header, uint8 pixels).
"""

from __future__ import annotations

import gzip
import struct
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np
from PIL import Image

from cliplab.data.evalsets import EvalSetWriter
from cliplab.recipes.builders import common
from cliplab.recipes.captions import sample_captions
from cliplab.recipes.install import source_path

BUILDER_VERSION = 2  # 2: caption_fn moved to cliplab.recipes.captions
SHARD_SIZE = 10000
LICENSE = "MIT (Zalando SE, 2017)"
#: Label index -> name (the dataset's own names, "T-shirt/top" shortened to read in a prompt).
CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
#: Same wording as the bundled ``fashion`` template set.
TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}, a type of clothing.",
    "a product photo of a {}.",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain) as a uint8 array: (N,) labels or (N, H, W) images."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {array.size} values for shape {shape}")
    return array.reshape(shape)


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = FILES[split]
    images, labels = read_idx(root / images_file), read_idx(root / labels_file)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def build(
    sources: Path,
    out: Path,
    *,
    force: bool = False,
    log: common.Log = print,
    only: Collection[str] | None = None,
) -> list[common.Output]:
    """The test evaluation set and the training shards, or those in ``only`` (see the
    module docstring)."""
    from cliplab.data.shardwriter import ShardWriter

    root = source_path("dataset-fashion-mnist", sources)
    outputs = []

    listing = common.file_listing(root, [root / f for f in FILES["test"]])
    fp = common.fingerprint(
        builder="fashion-mnist-eval",
        version=BUILDER_VERSION,
        classes=CLASSES,
        templates=TEMPLATES,
        inputs=listing,
    )
    path = out / "eval" / "fashion-mnist-test"
    hit = common.cached(path, fp, force)
    if hit is None and common.wanted(only, "eval", "fashion-mnist-test"):
        start = time.perf_counter()
        log("  building eval/fashion-mnist-test")
        images, labels = load_split(root, "test")
        writer = EvalSetWriter(
            path,
            "classification",
            name="fashion-mnist-test",
            description="Fashion-MNIST test split: 10,000 28x28 grey product photos, 10 classes, zero-shot from class names.",
            source="dataset-fashion-mnist (Debian), github.com/zalandoresearch/fashion-mnist",
            license=LICENSE,
            classnames=CLASSES,
            templates=TEMPLATES,
        )
        with writer:
            for i, (image, label) in enumerate(zip(images, labels)):
                writer.add(Image.fromarray(image), label=int(label), extra={"index": i})
        hit = common.record(
            path,
            fp,
            common.Output(
                "fashion-mnist-test",
                "classification",
                str(path),
                len(writer),
                seconds=time.perf_counter() - start,
                details={"classes": len(CLASSES)},
            ),
        )
    if hit is not None:
        outputs.append(hit)
    if not common.wanted(only, "shards", "fashion-mnist-train"):
        return outputs

    listing = common.file_listing(root, [root / f for f in FILES["train"]])
    fp = common.fingerprint(
        builder="fashion-mnist-shards",
        version=BUILDER_VERSION,
        classes=CLASSES,
        shard_size=SHARD_SIZE,
        inputs=listing,
    )
    path = out / "shards" / "fashion-mnist-train"
    hit = common.cached(path, fp, force)
    if hit is None:
        start = time.perf_counter()
        log("  building shards/fashion-mnist-train")
        images, labels = load_split(root, "train")
        with common.staging(path) as tmp:
            writer = ShardWriter(tmp, prefix="shard", max_samples=SHARD_SIZE)
            with writer:
                for i, (image, label) in enumerate(zip(images, labels)):
                    meta = {
                        "kind": "fashion-mnist",
                        "label": CLASSES[int(label)],
                        "label_index": int(label),
                        "group": "clothing" if int(label) not in (5, 7, 8, 9) else "fashion item",
                    }
                    meta["captions"] = sample_captions(meta, seed=("fashion-mnist", i), count=4)
                    writer.write(
                        f"{i:05d}", {"png": common.png_bytes(Image.fromarray(image)), "json": meta}
                    )
            stats = writer.close()
        hit = common.record(
            path,
            fp,
            common.Output(
                "fashion-mnist-train",
                "shards",
                str(path),
                stats["samples"],
                seconds=time.perf_counter() - start,
                details={"license": LICENSE},
            ),
            {
                "caption_fn": "cliplab.recipes.captions:draw_caption",
                "shards": [Path(s).name for s in stats["shards"]],
            },
        )
    outputs.append(hit)
    return outputs


BUILDER = common.Builder(
    "fashion-mnist",
    build,
    packages=("dataset-fashion-mnist",),
    shards=("fashion-mnist-train",),
    evalsets=("fashion-mnist-test",),
)
