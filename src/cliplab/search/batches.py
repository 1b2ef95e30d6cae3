"""The steps both embedding engines share (``cliplab embed``'s local loader and its Ray
stages): a source's records in order, decoded into batches of preprocessed pixels (a bad
record keeps its reason instead), and a batch encoded into normalised image and caption
features."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cliplab.data.decode import ImageDecoder, image_member
from cliplab.data.exif import photo_metadata
from cliplab.data.images import IMAGE_EXTS
from cliplab.data.storage import is_remote
from cliplab.data.stream import BadSample, RawSample, scan
from cliplab.encode import autocast_for, encode_texts, model_device, model_dtype

__all__ = ["Batch", "Item", "decode", "decode_batch", "encode_batch", "records"]


@dataclass
class Item:
    """One record after decoding: pixels, or the reason it could not be embedded."""

    key: str
    path: str | None
    pixels: torch.Tensor | None
    caption: str | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None
    sha256: str = ""  # of the image's bytes: a sync tells a changed file from a touched one
    photo: dict[str, Any] | None = None  # capture time, place, camera (cliplab.data.exif)
    bytes: int = 0  # size of the image's bytes
    mtime: float | None = None  # the file's modification time (seconds; local files only)


def records(
    source: Any, start: int, keep: Callable[[int], bool]
) -> Iterator[tuple[RawSample, str | None]]:
    """(record, the image's file or shard) of the records from ``start`` on whose position
    (counted from ``start``) ``keep`` accepts, in source order. Row sources (folders, CSV)
    read only those; streams (shards) are read through and the others dropped."""
    if callable(getattr(source, "record", None)) and hasattr(source, "__len__"):
        location = getattr(source, "location", None)
        for i in range(start, len(source)):
            if keep(i - start):
                yield source.record(i), location(i) if callable(location) else None
        return
    urls = getattr(source, "urls", None)
    if urls is not None:  # WebDataset: remember the shard of each record
        from cliplab.data.webdataset import iter_tar_records

        index = 0
        for url in urls:
            # a local shard is recorded by its absolute path (as files are): a collection is
            # searched and served from any working directory
            where = url if is_remote(url) or url.startswith("pipe:") else os.path.abspath(url)
            for record in iter_tar_records(url, getattr(source, "name", "")):
                if index >= start and keep(index - start):
                    yield record, where
                index += 1
        return
    for index, record in enumerate(scan(source)):
        if index >= start and keep(index - start):
            yield record, None


#: The training decoder without its training-only rules (aspect ratio, minimum size): every
#: image of a collection is searchable, and a bad record is rejected for the same reason.
DECODER = ImageDecoder(max_aspect=None, min_size=1)


def decode(
    record: RawSample, path: str | None, preprocess: Callable[[Any], torch.Tensor], captions: bool
) -> Item:
    """One record -> its pixels (the RGB picture, :func:`cliplab.data.images.rgb`, through
    the model's ``preprocess``) and caption, or the reason it cannot be embedded."""
    item = Item(record.key, path, None)
    member = image_member(record.members)
    if member is not None:
        item.sha256 = hashlib.sha256(record.members[member]).hexdigest()
    try:
        image = DECODER.image(record)
    except BadSample as e:
        item.reason = e.reason
        return item
    item.width, item.height = image.size
    if member is not None:
        data = record.members[member]
        item.bytes, item.photo = len(data), photo_metadata(data)
    if path and path.rsplit(".", 1)[-1].lower() in IMAGE_EXTS and not is_remote(path):
        with contextlib.suppress(OSError):
            item.mtime = os.stat(path).st_mtime
    item.pixels = preprocess(image)
    if captions:
        try:
            item.caption = DECODER.caption(record, random.Random(0))
        except BadSample:
            item.caption = None
    return item


@dataclass
class Batch:
    """Decoded items in order, and the stacked pixels of those without a ``reason``."""

    items: list[Item]
    pixels: torch.Tensor | None


def decode_batch(
    raw: list[tuple[RawSample, str | None]],
    preprocess: Callable[[Any], torch.Tensor],
    captions: bool,
) -> Batch:
    """Records (with their file or shard) decoded, the good images' pixels stacked into one
    tensor (one transfer from a worker per batch, not one per image)."""
    items = [decode(r, p, preprocess, captions) for r, p in raw]
    good = [it.pixels for it in items if it.pixels is not None]
    for it in items:
        it.pixels = None
    return Batch(items, torch.stack(good) if good else None)


@torch.no_grad()
def encode_batch(
    model: torch.nn.Module, batch: Batch, captions: bool, dim: int
) -> tuple[list[Item], np.ndarray | None, np.ndarray | None]:
    """A decoded batch -> (its items, normalised image features of the good ones, their
    caption features): the model step both engines share."""
    if batch.pixels is None:
        return batch.items, None, None
    device = model_device(model)
    with autocast_for(device):
        features = model.encode_image(batch.pixels.to(device, model_dtype(model)))
    images = F.normalize(features.float(), dim=-1).cpu().numpy()
    good = [it for it in batch.items if it.reason is None]
    texts = _caption_features(model, good, dim) if captions else None
    return batch.items, images, texts


def _caption_features(model: torch.nn.Module, items: list[Item], dim: int) -> np.ndarray:
    """Caption embeddings aligned with ``items`` (zero rows where there is no caption)."""
    out = np.zeros((len(items), dim), dtype=np.float32)
    texts = [(i, it.caption) for i, it in enumerate(items) if it.caption]
    if texts:
        features = encode_texts(model, None, [t for _, t in texts], batch_size=256)
        out[[i for i, _ in texts]] = features.numpy()
    return out
