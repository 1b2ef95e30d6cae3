"""Deterministic, resumable streaming of image-text batches to training.

The design, in four rules:
1. A *source* turns (seed, epoch, stream, num_streams) into an endless, deterministic
   iterator of raw samples (undecoded bytes and text). A stream is one data-loader worker of
   one rank: ``stream = rank * workers + worker``; sources split their shards by stream.
2. Each worker builds whole batches: it mixes sources by weight, passes raw samples through
   a shuffle buffer, decodes (skipping and counting bad samples), transforms and tokenizes.
   All randomness is seeded from (seed, epoch, stream) or (seed, epoch, sample key), so a
   batch never depends on timing or on how many workers ran before.
3. Every batch carries its stream's raw read position. The loader records, in the main
   process, the position of the last *consumed* batch of each stream; that is the state a
   checkpoint stores. Resuming fast-forwards each stream by raw records, without decoding,
   so it is exact even when bad samples were skipped.
4. Every stream yields exactly ``batches_per_epoch // num_streams`` batches per epoch (raw
   streams are endless), so ranks stay in step and workers interleave in a fixed order;
   on resume, workers are rotated so the round-robin order continues where it stopped.

An epoch is therefore a number of batches (one pass's worth), not an exact permutation:
with a shuffle buffer, the end of one pass mixes with the start of the next, as in every
streaming loader. With ``shuffle_buffer=1`` and one source, an epoch is exactly one pass.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cliplab.augment import square
from cliplab.data.samples import BadSample, RawSample

log = logging.getLogger("cliplab.data")

#: A stream that reads this many bad samples in a row stops with an error instead of
#: looping forever (every sample of a misconfigured source failing to decode, say).
MAX_CONSECUTIVE_BAD = 10_000


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts; identical across processes and runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Source(Protocol):
    """Where raw samples come from (shards, manifests, folders, a generator)."""

    name: str

    def num_samples(self) -> int:
        """Samples in one pass over the source (sets the epoch length)."""
        ...

    def iter_raw(self, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[RawSample]:
        """This stream's disjoint share of the source, endless (reshuffled on each pass)."""
        ...


#: Turns a raw sample into (PIL image, caption); raises BadSample. The ``random.Random`` is
#: seeded per sample from (seed, epoch, source, key): captions can be drawn afresh each epoch.
#: A decoder may also have ``caption(sample, rng)``, the caption alone (for cached images).
Decoder = Callable[[RawSample, random.Random], tuple[Any, str]]
Tokenize = Callable[[list[str]], torch.Tensor]
#: Prepared uint8 images (B, S, S, 3) + the batch's generator -> float (B, 3, S, S).
BatchAugment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def caption_of(decode: Decoder, sample: RawSample, rng: random.Random) -> str:
    """The sample's caption alone: the decoder's ``caption`` where it has one, else a full
    decode's (a generator's samples hold no image bytes to skip)."""
    caption = getattr(decode, "caption", None)
    return caption(sample, rng) if caption is not None else decode(sample, rng)[1]


def scan(source: Source) -> Iterator[RawSample]:
    """Every record of a source once, in order (sources without ``scan`` give one pass)."""
    if callable(getattr(source, "scan", None)):
        yield from source.scan()  # type: ignore[attr-defined]
        return
    raw = source.iter_raw(0, 0, 0, 1)
    for _ in range(source.num_samples()):
        yield next(raw)


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) float
    tokens: torch.Tensor  # (B, L) long
    keys: list[str]
    stream: int = 0
    position: int = 0  # raw samples this stream had read when the batch was complete
    skipped: dict[str, int] = field(default_factory=dict)  # bad samples since the last batch
    second_tokens: torch.Tensor | None = None  # (B, L): another caption of each image, or None

    def __len__(self) -> int:
        return len(self.keys)


class ImageTextStream(IterableDataset):
    """The per-worker batch builder (an ``IterableDataset`` yielding ``Batch`` objects).

    Per sample: decode (or take the cached pixels), :func:`cliplab.augment.square` to the
    model's size, draw the caption (and a second one with ``second_caption``); per batch: the
    one augmentation (``augment``, :class:`cliplab.augment.Augment`) on the whole batch, with
    a generator seeded by (seed, epoch, stream, batch), and the tokenizer.

    ``decode``: one decoder for every source, one per source (``None`` entries: the source's
    own ``decode``), or ``None`` (every source decodes its own samples).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        decode: Decoder | Sequence[Decoder | None] | None,
        augment: BatchAugment,
        tokenize: Tokenize,
        batch_size: int,
        *,
        image_size: int,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        batches_per_epoch: int | None = None,
        second_caption: bool = False,
    ) -> None:
        if not sources:
            raise ValueError("ImageTextStream needs at least one source")
        if weights is not None and (
            len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0
        ):
            raise ValueError(
                f"weights must be {len(sources)} non-negative numbers with a positive sum, got {weights}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        per_source = list(decode) if isinstance(decode, Sequence) else [decode] * len(sources)
        if len(per_source) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(per_source)} decoders")
        self.decoders: dict[str, Decoder] = {}
        for source, own in zip(sources, per_source, strict=True):
            chosen = own if own is not None else getattr(source, "decode", None)
            if not callable(chosen):
                raise ValueError(f"no decoder for source {source.name!r}: pass decode=")
            self.decoders[source.name] = chosen
        # samples whose ``source`` names no source (a source that leaves it empty) go to the
        # first source's decoder
        self.default_decoder = self.decoders[sources[0].name]
        self.sources = list(sources)
        self.weights = (
            list(weights) if weights is not None else [float(s.num_samples()) for s in self.sources]
        )
        self.augment = augment
        self.tokenize = tokenize
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.second_caption = second_caption
        total = sum(s.num_samples() for s in self.sources)
        self.batches_per_epoch = batches_per_epoch or max(1, total // (batch_size * world_size))
        # set by the loader before each epoch's iterator is created
        self.epoch = 0
        self.num_workers = 1
        self.start_batch = 0  # batches of this epoch already consumed on this rank
        self.start_positions: dict[int, int] = {}  # stream -> raw samples already consumed

    # -- the stream a worker serves ------------------------------------------------------
    def streams_per_rank(self) -> int:
        return max(1, self.num_workers)

    def batches_for(self, local_stream: int) -> int:
        """Batches that local stream ``local_stream`` yields in one epoch (rank-local split)."""
        per, extra = divmod(self.batches_per_epoch, self.streams_per_rank())
        return per + (1 if local_stream < extra else 0)

    def _raw_stream(self, stream: int, num_streams: int) -> Iterator[RawSample]:
        """Sources mixed by weight, then a shuffle buffer; deterministic for (seed, epoch, stream)."""
        rng = random.Random(stable_seed(self.seed, self.epoch, stream, "mix"))
        iters = [s.iter_raw(self.seed, self.epoch, stream, num_streams) for s in self.sources]
        buffer: list[RawSample] = []
        # rng.choices(weights=...) would rebuild these sums on every call; the draws are the same
        sums, total = list(itertools.accumulate(self.weights)), sum(self.weights)
        last = len(iters) - 1
        size = max(1, self.shuffle_buffer)
        while True:
            i = min(bisect.bisect(sums, rng.random() * total), last) if last else 0
            if size == 1:  # no buffer (a cache reshuffles every pass itself)
                yield next(iters[i])
                continue
            buffer.append(next(iters[i]))
            if len(buffer) >= size:
                j = rng.randrange(len(buffer))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()

    def _sample(self, sample: RawSample, rng: random.Random) -> tuple[torch.Tensor, str, str]:
        """(pixels (S, S, 3) uint8, caption, second caption or ""); BadSample."""
        decode = self.decoders.get(sample.source, self.default_decoder)
        if sample.image is not None:  # cached pixels: the caption alone, drawn afresh
            pixels, caption = sample.image, caption_of(decode, sample, rng)
        else:
            image, caption = decode(sample, rng)
            pixels = square(image, self.image_size)
        # the second caption is its own draw: another template, tags or language
        second = caption_of(decode, sample, rng) if self.second_caption else ""
        return pixels, caption, second

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = self.streams_per_rank()
        # rotation: after resuming at batch b, the first worker to yield must be stream b % W
        local = (worker + self.start_batch) % workers
        stream = self.rank * workers + local
        num_streams = self.world_size * workers
        consumed_batches = sum(1 for j in range(self.start_batch) if j % workers == local)
        remaining = self.batches_for(local) - consumed_batches
        raw = self._raw_stream(stream, num_streams)
        position = self.start_positions.get(stream, 0)
        for _ in itertools.islice(raw, position):  # fast-forward without decoding
            pass
        for number in range(consumed_batches, consumed_batches + max(0, remaining)):
            images, captions, seconds, keys = [], [], [], []
            skipped: Counter[str] = Counter()
            bad_in_a_row = 0
            while len(keys) < self.batch_size:
                sample = next(raw)
                position += 1
                sample_seed = stable_seed(self.seed, self.epoch, sample.source, sample.key)
                try:
                    pixels, caption, second = self._sample(sample, random.Random(sample_seed))
                except BadSample as e:
                    skipped[e.reason] += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= MAX_CONSECUTIVE_BAD:
                        raise RuntimeError(
                            f"data stream {stream}: {bad_in_a_row} bad samples in a row "
                            f"({dict(skipped)}); check the data source and decoder"
                        ) from e
                    continue
                bad_in_a_row = 0
                images.append(pixels)
                captions.append(caption)
                seconds.append(second)
                keys.append(sample.key)
            g = torch.Generator().manual_seed(stable_seed(self.seed, self.epoch, stream, number))
            yield Batch(
                self.augment(torch.stack(images), g),
                self.tokenize(captions),
                keys,
                stream=stream,
                position=position,
                skipped=dict(skipped),
                second_tokens=self.tokenize(seconds) if self.second_caption else None,
            )


class StreamingLoader:
    """Iterates ``ImageTextStream`` batches through worker processes, and remembers where
    it is: ``state_dict()`` after any batch, ``load_state_dict()`` to continue exactly there.
    """

    def __init__(
        self,
        stream: ImageTextStream,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
        worker_init_fn: Callable[[int], None] | None = None,
    ) -> None:
        self.stream = stream
        self.worker_init_fn = worker_init_fn
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        stream.num_workers = max(1, num_workers)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.positions: dict[int, int] = {}
        self.skipped: Counter[str] = Counter()  # this epoch's bad samples, by reason
        self.last_epoch_skipped: dict[str, int] = {}  # the previous epoch's, for reports

    def __len__(self) -> int:
        return self.stream.batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "positions": {str(k): v for k, v in self.positions.items()},
            "skipped": dict(self.skipped),
            "num_workers": self.num_workers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_workers", self.num_workers) != self.num_workers:
            raise ValueError(
                f"data position was saved with {state['num_workers']} workers; resume with the same "
                f"number (got {self.num_workers}) for an exact continuation"
            )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.positions = {int(k): int(v) for k, v in state.get("positions", {}).items()}
        self.skipped = Counter(state.get("skipped", {}))

    def iter_epoch(self) -> Iterator[Batch]:
        """The rest of the current epoch (all of it unless resuming); then advances the epoch."""
        s = self.stream
        s.epoch, s.start_batch, s.start_positions = (
            self.epoch,
            self.batch_in_epoch,
            dict(self.positions),
        )
        loader = DataLoader(
            s,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            worker_init_fn=self.worker_init_fn,
        )
        for batch in loader:
            self.batch_in_epoch += 1
            self.positions[batch.stream] = batch.position
            self.skipped.update(batch.skipped)
            yield batch
        self.last_epoch_skipped = dict(self.skipped)
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.skipped.most_common()) or "none"
        log.info(
            "data epoch %d: %d batches, %d bad samples skipped (%s)",
            self.epoch,
            self.batch_in_epoch,
            total,
            reasons,
        )
        self.epoch += 1
        self.batch_in_epoch = 0
        self.positions = {}
        self.skipped = Counter()

    def __iter__(self) -> Iterator[Batch]:
        """Endless: epoch after epoch."""
        while True:
            yield from self.iter_epoch()
