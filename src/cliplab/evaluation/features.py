"""Frozen features, computed once per model and dataset.

:func:`encode_images` runs the image tower over a list of images in batches (no grad,
autocast on GPU, progress on stderr). :class:`FeatureStore` binds one model and keeps its
features of each dataset in memory and, with a ``cache_dir``, on disk as safetensors keyed by
the model's fingerprint, the dataset's fingerprint and the preprocessing, so that every
protocol of a report, and every later run, reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cliplab.evaluation.datasets import ClassificationSet, ImageLike, RetrievalSet
from cliplab.evaluation.progress import progress_bar
from cliplab.zeroshot import (
    Tokenizer,
    autocast_for,
    build_zero_shot_classifier,
    encode_texts,
    load_cached,
    model_device,
    model_dtype,
    model_fingerprint,
    save_cached,
)

__all__ = ["FEATURES_VERSION", "FeatureStore", "encode_images", "open_image"]

#: Bumped when feature extraction changes, which invalidates cached features.
FEATURES_VERSION = 1


def open_image(item: ImageLike) -> Image.Image:
    """A PIL image from a PIL image or a path (read fully, so no file stays open)."""
    if isinstance(item, Image.Image):
        return item
    with Image.open(item) as image:
        image.load()
        return image.copy()


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[ImageLike], preprocess: Callable[[Any], torch.Tensor]):
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(open_image(self.images[index]))


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    images: Sequence[ImageLike],
    preprocess: Callable[[Any], torch.Tensor],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "images",
) -> torch.Tensor:
    """Image features (N, D) as ``model.encode_image`` gives them (not normalised), float32 on
    CPU. ``device`` defaults to the model's; the model must already be there."""
    if len(images) == 0:
        raise ValueError("no images to encode")
    device = torch.device(device) if device is not None else model_device(model)
    dtype = model_dtype(model)
    loader = torch.utils.data.DataLoader(
        _Images(images, preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    out = []
    for batch in progress_bar(loader, total=len(loader), desc=desc, enabled=progress):
        with autocast_for(device):
            features = model.encode_image(batch.to(device, dtype=dtype, non_blocking=True))
        out.append(features.float().cpu())
    return torch.cat(out)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


class FeatureStore:
    """Features of one model: image features per dataset, text features, zero-shot weights.

    Each is computed at most once per store (memory) and, with ``cache_dir``, once per model
    and dataset across runs (disk). The model's fingerprint is taken once, when the store is
    made: do not change the model's weights while the store is in use.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Tokenizer | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        progress: bool = True,
        model_key: str | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.progress = progress
        self.model_key = model_key or model_fingerprint(model)
        self._memory: dict[str, torch.Tensor] = {}
        #: How many feature sets were computed (not found in memory or on disk): for tests.
        self.computed = 0

    def _cached(self, key: str, prefix: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._memory:
            return self._memory[key]
        path = self.cache_dir / f"{prefix}-{key[:40]}.safetensors" if self.cache_dir else None
        value = load_cached(path, key) if path is not None else None
        if value is None:
            value = compute()
            self.computed += 1
            if path is not None:
                save_cached(path, key, value)
        self._memory[key] = value
        return value

    def images(self, images: Sequence[ImageLike], dataset_key: str, desc: str) -> torch.Tensor:
        """Unnormalised image features (N, D) of ``images``, named by ``dataset_key``."""
        key = _key("images", FEATURES_VERSION, self.model_key, dataset_key, repr(self.preprocess))
        return self._cached(
            key,
            "features",
            lambda: encode_images(
                self.model,
                images,
                self.preprocess,
                batch_size=self.batch_size,
                device=self.device,
                num_workers=self.num_workers,
                progress=self.progress,
                desc=desc,
            ),
        )

    def dataset(self, dataset: ClassificationSet | RetrievalSet) -> torch.Tensor:
        """Unnormalised image features (N, D) of a dataset's images."""
        return self.images(dataset.images, dataset.fingerprint, desc=f"{dataset.name} images")

    def texts(self, texts: Sequence[str], desc: str = "texts") -> torch.Tensor:
        """L2-normalised text features (N, D)."""
        key = _key("texts", FEATURES_VERSION, self.model_key, list(texts))
        return self._cached(
            key,
            "texts",
            lambda: encode_texts(
                self.model,
                self.tokenizer,
                list(texts),
                batch_size=max(self.batch_size, 128),
                device=self.device,
                progress=self.progress,
                desc=desc,
            ),
        )

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Zero-shot weights (C, D) (see :func:`cliplab.zeroshot.build_zero_shot_classifier`)."""
        key = _key("classifier", self.model_key, list(classnames), list(templates))
        if key not in self._memory:
            self._memory[key] = build_zero_shot_classifier(
                self.model,
                self.tokenizer,
                classnames,
                templates,
                batch_size=max(self.batch_size, 128),
                device=self.device,
                cache_dir=self.cache_dir,
                progress=self.progress,
                model_key=self.model_key,
            )
        return self._memory[key]
