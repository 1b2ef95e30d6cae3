"""An in-memory training loader for small datasets: decode once, augment in batches.

The streaming loader (:mod:`cliplab.data.stream`) decodes and augments every sample of every
epoch, one PIL image at a time. That is the right design for web-scale data; for the few
thousand small images of the demo (emoji, clip art, icons) it is the bottleneck of a CPU
run: decoding a PNG, compositing it on white and a bicubic crop cost more than the tiny
model's forward and backward pass. :class:`MemoryLoader` instead

1. reads every source once (one pass of ``iter_raw``), decodes each image with the source's
   own decoder (alpha composited on white, bad samples counted and skipped), center-crops it
   to ``image_size`` and keeps it as uint8 (1,911 emoji at 32 px: 6 MB), together with the
   sample's raw metadata minus the image bytes;
2. per batch, optionally jitters colours, greys or blurs images (:func:`color_augment`),
   normalises with CLIP's mean and std and applies a random resized crop to the whole batch
   at once (``affine_grid`` + bilinear ``grid_sample``; area fraction in ``scale``, aspect
   ratio in ``ratio``, as torchvision's ``RandomResizedCrop`` samples them);
3. draws every caption afresh each epoch with the source's ``caption_fn``, from a
   ``random.Random`` seeded by (seed, epoch, source, key): the same seeding as the stream.

Epochs are deterministic for (seed, epoch): the sources are mixed by weight (by size when no
weights are given) into ``len(loader)`` global batches, each rank taking its slice, so resume
needs only (epoch, batch in epoch), like :class:`~cliplab.data.stream.StreamingLoader`, whose
interface this class shares (``__iter__`` yields :class:`~cliplab.data.stream.Batch`,
``__len__``, ``epoch``, ``state_dict``/``load_state_dict``).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cliplab.data.stream import (
    MAX_CONSECUTIVE_BAD,
    BadSample,
    Batch,
    Decoder,
    RawSample,
    Source,
    Tokenize,
    stable_seed,
)
from cliplab.transforms import OPENAI_MEAN, OPENAI_STD

log = logging.getLogger("cliplab.data")

__all__ = ["MemoryLoader", "color_augment", "random_resized_crop"]

_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "ppm")


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """A random resized crop per image of ``images`` (B, C, S, S), resampled to S x S.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); a crop that would not fit is
    shrunk to fit (instead of torchvision's retry loop, which is sequential). Bilinear
    sampling; ``fill`` (C,) is the value outside the image (none is reached unless the crop
    is larger than the image, which the clamp prevents).
    """
    b, c, s, _ = images.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # fractions of the side
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # centre, in [-1, 1] coords
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = w, h, cx, cy
    grid = F.affine_grid(theta, [b, c, s, s], align_corners=False)
    shift = fill.view(1, c, 1, 1) if fill is not None else 0.0
    out = F.grid_sample(
        images - shift, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out + shift


_LUMA = (0.299, 0.587, 0.114)


def color_augment(
    images: torch.Tensor,
    generator: torch.Generator,
    jitter: float = 0.0,
    grayscale: float = 0.0,
    blur: float = 0.0,
    invert: float = 0.0,
) -> torch.Tensor:
    """Per-image photometric augmentation of ``images`` (B, 3, H, W) in [0, 1].

    ``jitter``: brightness, contrast and saturation factors each ~ U(1 - j, 1 + j);
    ``grayscale``: probability of a grey (luma) image; ``blur``: probability of a 3x3
    binomial blur; ``invert``: probability of the negative ``1 - x`` (light drawings on a
    dark ground, as in Fashion-MNIST, where every training image is dark on white). Emoji of
    another vendor differ from the training style in shading, palette and line weight: these
    make the image tower lean less on them.
    """
    b = images.shape[0]
    x = images
    luma = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    if jitter > 0:
        factors = 1 + (torch.rand(3, b, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        x = x * factors[0]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factors[1] + mean
        grey = (x * luma).sum(1, keepdim=True)
        x = (x - grey) * factors[2] + grey
    if grayscale > 0:
        mask = (torch.rand(b, 1, 1, 1, generator=generator) < grayscale).to(x.dtype)
        grey = (x * luma).sum(1, keepdim=True).expand_as(x)
        x = mask * grey + (1 - mask) * x
    if blur > 0:
        chosen = (torch.rand(b, generator=generator) < blur).nonzero().flatten()
        if len(chosen):  # the binomial kernel is separable: two 3-tap passes, chosen only
            p = F.pad(x[chosen], (1, 1, 1, 1), mode="replicate")  # (n, 3, H + 2, W + 2)
            p = (p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]) / 4  # along W
            p = (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]) / 4  # along H
            x = x.index_copy(0, chosen, p)
    if invert > 0:
        mask = (torch.rand(b, 1, 1, 1, generator=generator) < invert).to(x.dtype)
        x = mask * (1 - x.clamp(0, 1)) + (1 - mask) * x
    return x.clamp(0, 1)


def _square(image: Any, size: int) -> np.ndarray:
    """PIL image (shorter side about ``size``) -> (size, size, 3) uint8, resized and center-cropped."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if min(w, h) != size:
        k = size / min(w, h)
        image = image.resize(
            (max(size, round(w * k)), max(size, round(h * k))), Image.Resampling.BICUBIC
        )
        w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class MemoryLoader:
    """Batches of (augmented images, tokenized fresh captions) from data held in memory."""

    def __init__(
        self,
        sources: Sequence[Source],
        decoders: Sequence[Decoder],
        *,
        image_size: int,
        tokenize: Tokenize,
        batch_size: int,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
        scale: tuple[float, float] = (0.9, 1.0),
        color_jitter: float = 0.0,
        grayscale: float = 0.0,
        blur: float = 0.0,
        invert: float = 0.0,
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        progress: Callable[[str], None] | None = None,
        second_caption: bool = False,
    ) -> None:
        if len(sources) != len(decoders):
            raise ValueError(f"{len(sources)} sources but {len(decoders)} decoders")
        if weights is not None and len(weights) != len(sources):
            raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
        self.image_size = image_size
        self.tokenize = tokenize
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.augment, self.scale, self.ratio = augment, scale, ratio
        self.color = (color_jitter, grayscale, blur, invert)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.white = ((1.0 - self.mean) / self.std).view(3)
        self.decoders = list(decoders)
        self.second_caption = second_caption
        self.names: list[str] = []
        self.images: list[torch.Tensor] = []  # per source: (n, S, S, 3) uint8
        self.samples: list[list[RawSample]] = []  # per source: metadata, image bytes dropped
        self.load_skipped: Counter[str] = Counter()
        for source, decode in zip(sources, decoders, strict=True):
            self._load(source, decode, progress)
        sizes = [len(s) for s in self.samples]
        if sum(sizes) == 0:
            raise ValueError("no usable samples in any source")
        w = [float(x) for x in (weights if weights is not None else sizes)]
        w = [x if n else 0.0 for x, n in zip(w, sizes, strict=True)]
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {w}")
        self.weights = [x / sum(w) for x in w]
        global_batch = batch_size * world_size
        self.batches_per_epoch = max(1, sum(sizes) // global_batch)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.last_epoch_skipped: dict[str, int] = dict(self.load_skipped)

    # -- loading -----------------------------------------------------------------------------
    def _load(
        self, source: Source, decode: Decoder, progress: Callable[[str], None] | None
    ) -> None:
        name = getattr(source, "name", f"source{len(self.names)}")
        total = source.num_samples()
        images: list[np.ndarray] = []
        kept: list[RawSample] = []
        skipped: Counter[str] = Counter()
        in_a_row = 0
        raw = source.iter_raw(self.seed, 0, 0, 1)
        for i in range(total):
            sample = next(raw)
            rng = random.Random(stable_seed(self.seed, 0, sample.source, sample.key))
            try:
                image, _ = decode(sample, rng)
                array = _square(image, self.image_size)
            except BadSample as e:
                skipped[e.reason] += 1
                in_a_row += 1
                if in_a_row >= MAX_CONSECUTIVE_BAD:
                    raise RuntimeError(
                        f"{name}: {in_a_row} bad samples in a row (last: {e}); is the source right?"
                    ) from e
                continue
            in_a_row = 0
            images.append(array)
            members = {k: v for k, v in sample.members.items() if k.lower() not in _IMAGE_EXTS}
            kept.append(replace(sample, members=members))
            if progress is not None and (i + 1) % 2000 == 0:
                progress(f"{name}: {i + 1}/{total} decoded")
        self.names.append(name)
        size = self.image_size
        stack = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
        self.images.append(torch.from_numpy(stack))
        self.samples.append(kept)
        self.load_skipped.update(skipped)
        detail = ", ".join(f"{k} {v}" for k, v in skipped.most_common()) or "none"
        log.info("%s: %d of %d samples in memory (skipped: %s)", name, len(kept), total, detail)

    # -- the loader interface ----------------------------------------------------------------
    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.samples)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "kind": "memory"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind", "memory") != "memory":
            raise ValueError("this checkpoint's data position is a streaming loader's")
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])

    def _plan(self, epoch: int) -> list[tuple[int, int]]:
        """The epoch's global sample order: (source, index) pairs, mixed by weight."""
        rng = random.Random(stable_seed(self.seed, epoch, "memory-plan"))
        n = self.batches_per_epoch * self.batch_size * self.world_size
        choices = rng.choices(range(len(self.samples)), weights=self.weights, k=n)
        orders = [rng.sample(range(len(s)), len(s)) for s in self.samples]
        cursors = [0] * len(self.samples)
        plan = []
        for s in choices:
            order = orders[s]
            if cursors[s] == len(order):  # a heavily weighted source: reshuffle and go on
                order[:] = rng.sample(range(len(order)), len(order))
                cursors[s] = 0
            plan.append((s, order[cursors[s]]))
            cursors[s] += 1
        return plan

    def make_batch(self, epoch: int, index: int, picks: Sequence[tuple[int, int]]) -> Batch:
        """The batch of ``picks`` (source, sample) for (epoch, batch index) on this rank."""
        images = torch.stack([self.images[s][i] for s, i in picks])  # (B, S, S, 3) uint8
        x = images.permute(0, 3, 1, 2).float().div_(255)
        g = torch.Generator().manual_seed(stable_seed(self.seed, epoch, index, self.rank))
        if self.augment and any(self.color):
            x = color_augment(x, g, *self.color)
        x = (x - self.mean) / self.std
        if self.augment:
            x = random_resized_crop(x, g, self.scale, self.ratio, fill=self.white)
        captions, seconds, keys = [], [], []
        for s, i in picks:
            sample = self.samples[s][i]
            rng = random.Random(stable_seed(self.seed, epoch, sample.source, sample.key))
            captions.append(self._caption(s, sample, rng))
            if self.second_caption:  # its own draw: another template, tags or language
                seconds.append(self._caption(s, sample, rng))
            keys.append(sample.key)
        second = self.tokenize(seconds) if self.second_caption else None
        return Batch(
            images=x.contiguous(), tokens=self.tokenize(captions), keys=keys, second_tokens=second
        )

    def _caption(self, s: int, sample: RawSample, rng: random.Random) -> str:
        decode = self.decoders[s]
        caption_of = getattr(decode, "caption", None)
        if caption_of is None:  # e.g. the synthetic source: its samples hold no image bytes
            return decode(sample, rng)[1]
        return caption_of(sample, rng)

    def iter_epoch(self) -> Iterator[Batch]:
        """The rest of the current epoch; then advances the epoch."""
        plan = self._plan(self.epoch)
        per_rank = self.batch_size
        while self.batch_in_epoch < self.batches_per_epoch:
            b = self.batch_in_epoch
            start = (b * self.world_size + self.rank) * per_rank
            batch = self.make_batch(self.epoch, b, plan[start : start + per_rank])
            self.batch_in_epoch += 1
            yield batch
        self.epoch += 1
        self.batch_in_epoch = 0

    def __iter__(self) -> Iterator[Batch]:
        """Endless: epoch after epoch."""
        while True:
            yield from self.iter_epoch()
