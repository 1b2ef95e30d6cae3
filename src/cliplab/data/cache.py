"""The in-memory cache: a stage in front of the stream that decodes each image once.

The stream (:mod:`cliplab.data.stream`) decodes every sample of every epoch. That is the
right design for web-scale data; for the few thousand small images of the demo (emoji, clip
art, icons) decoding a PNG, compositing it on white and resizing it cost more than the tiny
model's forward and backward pass. :class:`MemoryCache` wraps a source and

1. reads it once (:func:`~cliplab.data.stream.scan`), decodes each image with the source's
   own decoder (bad samples counted by reason and skipped) and prepares it as the stream
   does (:func:`cliplab.augment.square`), keeping it as uint8 (1,911 emoji at 32 px: 6 MB)
   with the sample's metadata minus the image bytes;
2. is itself a source: each pass yields the kept samples in a fresh order (seeded by seed,
   epoch and pass; each stream its disjoint share), carrying their pixels in
   ``RawSample.image``, so the stream skips decoding them and draws only their captions.

Everything after it (mixing, batching, the one augmentation, captions drawn afresh each
epoch, resume) is the stream's, the same for a cached run as for a streamed one.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from cliplab.augment import square
from cliplab.data.images import IMAGE_EXTS
from cliplab.data.stream import (
    MAX_CONSECUTIVE_BAD,
    BadSample,
    Decoder,
    RawSample,
    Source,
    scan,
    stable_seed,
)

log = logging.getLogger("cliplab.data")

__all__ = ["MemoryCache"]


class MemoryCache:
    """A source whose images were decoded and prepared once, at construction (see above).

    ``skipped`` counts the samples left out by reason (``truncated-image``,
    ``excluded-label``...). A source that fails ``MAX_CONSECUTIVE_BAD`` times in a row is
    misconfigured: a clear error, not an empty cache.
    """

    def __init__(
        self,
        source: Source,
        decode: Decoder | None,
        image_size: int,
        *,
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        decode = decode if decode is not None else getattr(source, "decode", None)
        if not callable(decode):
            raise ValueError(f"no decoder for source {source.name!r}")
        self.name = source.name
        self.decode = decode
        self.image_size = image_size
        self.skipped: Counter[str] = Counter()
        kept: list[RawSample] = []
        pixels: list[torch.Tensor] = []
        in_a_row = 0
        total = source.num_samples()
        for i, sample in enumerate(scan(source)):
            rng = random.Random(stable_seed(seed, 0, sample.source, sample.key))
            try:
                image, _ = decode(sample, rng)
                pixels.append(square(image, image_size))
            except BadSample as e:
                self.skipped[e.reason] += 1
                in_a_row += 1
                if in_a_row >= MAX_CONSECUTIVE_BAD:
                    raise RuntimeError(
                        f"{self.name}: {in_a_row} bad samples in a row (last: {e}); "
                        "is the source right?"
                    ) from e
                continue
            in_a_row = 0
            metadata = {k: v for k, v in sample.members.items() if k.lower() not in IMAGE_EXTS}
            kept.append(replace(sample, members=metadata))
            if progress is not None and (i + 1) % 2000 == 0:
                progress(f"{self.name}: {i + 1}/{total} decoded")
        self.samples = kept
        shape = (0, image_size, image_size, 3)
        self.pixels = torch.stack(pixels) if pixels else torch.zeros(shape, dtype=torch.uint8)
        detail = ", ".join(f"{k} {v}" for k, v in self.skipped.most_common()) or "none"
        log.info("%s: %d samples in memory (skipped: %s)", self.name, len(kept), detail)

    def num_samples(self) -> int:
        return len(self.samples)

    def scan(self) -> Iterator[RawSample]:
        """Every kept sample once, in the source's order, with its pixels."""
        for sample, pixels in zip(self.samples, self.pixels, strict=True):
            yield replace(sample, image=pixels)

    def iter_raw(self, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[RawSample]:
        """This stream's share of the kept samples, endless, in a fresh order each pass."""
        n = len(self.samples)
        if n == 0:
            raise ValueError(f"{self.name}: no usable samples in memory")
        with_pixels = [  # built here, in the worker that iterates (nothing more to pickle)
            RawSample(s.key, s.members, s.source, pixels)
            for s, pixels in zip(self.samples, self.pixels, strict=True)
        ]
        for cycle in itertools.count():
            order = list(range(n))
            random.Random(stable_seed(seed, epoch, cycle, self.name, "cache")).shuffle(order)
            for i in order[stream::num_streams] or order:
                yield with_pixels[i]
