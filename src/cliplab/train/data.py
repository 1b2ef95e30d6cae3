"""The training data pipeline built from ``[data]``: sources, transform, tokenizer, loader.

Every ``[[data.sources]]`` table is a typed spec (:mod:`cliplab.data.sources`) that opens its
source and names its caption function; its optional ``weight`` sets the mixing proportion. Batches are deterministic for (seed, epoch, rank,
worker) and the loader's position is part of every checkpoint.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import torch

from cliplab.data import ImageTextStream, StreamingLoader
from cliplab.data.memory import MemoryLoader
from cliplab.data.sources import source_weights
from cliplab.tokenizer import tokenize
from cliplab.train.config import Config
from cliplab.transforms import EvalTransform, TrainTransform

log = logging.getLogger("cliplab.train")


def ignore_sigterm_in_worker(worker_id: int) -> None:
    """Data-loader workers ignore SIGTERM (the loader's ``worker_init_fn``).

    Preemption (``torchrun`` forwarding a signal to each rank's process group, SLURM
    signalling every process of a job step) also reaches the data workers, which torch
    would let die, failing the step in progress. The trainer handles SIGTERM: it finishes
    the step, writes a checkpoint and exits, and the workers exit with it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TokenizeCaptions:
    """Captions -> (B, context_length) token ids, long captions truncated (picklable for
    spawned workers, unlike a lambda)."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    def __call__(self, captions: list[str]) -> torch.Tensor:
        return tokenize(captions, context_length=self.context_length, truncate=True)


class ImageTransform:
    """PIL image + per-sample generator -> (3, S, S) tensor, as ``ImageTextStream`` wants.

    With ``augment`` it is CLIP's random resized crop driven by the stream's generator (so
    batches are reproducible); otherwise the eval resize and center crop.
    """

    def __init__(
        self, image_size: int, augment: bool = True, scale: tuple[float, float] = (0.9, 1.0)
    ) -> None:
        self.augment = augment
        self.eval = EvalTransform(image_size)
        self.train = TrainTransform(image_size, scale=scale)

    def __call__(self, image: Any, generator: torch.Generator) -> torch.Tensor:
        return self.train(image, generator=generator) if self.augment else self.eval(image)


def _decoders(config: Config, sources: list[Any], image_size: int) -> list[Any]:
    """One decoder per source: its own ``decode`` (synthetic) or an ``ImageDecoder``."""
    from cliplab.data.decode import ImageDecoder  # image codecs, only for file-based sources

    out = []
    for spec, source in zip(config.data.sources, sources, strict=True):
        own = getattr(source, "decode", None)
        if callable(own):
            if spec.exclude_labels:
                raise ValueError(
                    f"{spec.display_name}: exclude_labels needs samples with a json label "
                    f"(file-based sources); a {spec.kind} source makes its own"
                )
            out.append(own)
        else:
            # decoding straight to about the model's size (JPEG draft mode, one resize) is
            # what makes file-based sources fast; the transform then crops from that
            out.append(
                ImageDecoder(
                    image_size=image_size,
                    caption_fn=spec.caption_function(),
                    exclude_labels=spec.excluded_labels(),
                )
            )
    return out


class PerSourceDecoder:
    """The stream's single ``decode``: each raw sample goes to its source's decoder (picklable)."""

    def __init__(self, names: list[str], decoders: list[Any]) -> None:
        self.by_name = dict(zip(names, decoders, strict=True))
        self.default = decoders[0]

    def __call__(self, sample: Any, rng: Any) -> Any:
        return self.by_name.get(sample.source, self.default)(sample, rng)


def build_loader(
    config: Config,
    image_size: int,
    context_length: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> StreamingLoader | MemoryLoader:
    """This rank's loader of ``batch_size``-sample batches (the rank's share of the global batch)."""
    sources = [spec.open() for spec in config.data.sources]
    names = [s.name for s in sources]
    for i, source in enumerate(sources):  # samples go to their source's decoder by name
        if names.count(source.name) > 1:
            source.name = f"{source.name}-{i}"
    decoders = _decoders(config, sources, image_size)
    if config.data.in_memory:
        return MemoryLoader(
            sources,
            decoders,
            image_size=image_size,
            tokenize=TokenizeCaptions(context_length),
            batch_size=batch_size,
            weights=source_weights(config.data.sources),
            seed=config.train.seed,
            rank=rank,
            world_size=world_size,
            augment=config.data.augment,
            scale=config.data.crop_scale,
            color_jitter=config.data.color_jitter,
            grayscale=config.data.grayscale,
            blur=config.data.blur,
            invert=config.data.invert,
            progress=lambda m: log.info("%s", m),
            second_caption=bool(config.train.second_caption),
        )
    decode = None
    if not all(callable(getattr(s, "decode", None)) for s in sources):
        decode = PerSourceDecoder([s.name for s in sources], decoders)
    stream = ImageTextStream(
        sources,
        decode=decode,
        transform=ImageTransform(image_size, config.data.augment, config.data.crop_scale),
        tokenize=TokenizeCaptions(context_length),
        batch_size=batch_size,
        weights=source_weights(config.data.sources),
        seed=config.train.seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    return StreamingLoader(
        stream,
        num_workers=config.data.workers,
        pin_memory=pin_memory,
        worker_init_fn=ignore_sigterm_in_worker,
    )
