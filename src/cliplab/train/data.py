"""The training data pipeline built from ``[data]``: sources, transform, tokenizer, loader.

Every ``[[data.sources]]`` table goes to ``cliplab.data.build_source`` (its optional
``weight`` sets the mixing proportion). Batches are deterministic for (seed, epoch, rank,
worker) and the loader's position is part of every checkpoint.
"""

from __future__ import annotations

import signal
from typing import Any

import torch

from cliplab.data import ImageTextStream, StreamingLoader, build_source
from cliplab.tokenizer import tokenize
from cliplab.train.config import Config
from cliplab.transforms import EvalTransform, TrainTransform


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

    def __init__(self, image_size: int, augment: bool = True) -> None:
        self.augment = augment
        self.eval = EvalTransform(image_size)
        self.train = TrainTransform(image_size)

    def __call__(self, image: Any, generator: torch.Generator) -> torch.Tensor:
        return self.train(image, generator=generator) if self.augment else self.eval(image)


def source_weights(specs: tuple[dict[str, Any], ...]) -> list[float] | None:
    """Mixing weights from the tables' ``weight`` keys (1.0 where absent); None when no
    table gives one (the stream then mixes by source size)."""
    if not any("weight" in s for s in specs):
        return None
    return [float(s.get("weight", 1.0)) for s in specs]


def build_loader(
    config: Config,
    image_size: int,
    context_length: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> StreamingLoader:
    """This rank's loader of ``batch_size``-sample batches (the rank's share of the global batch)."""
    sources = [build_source(spec) for spec in config.data.sources]
    decode = None
    if not all(callable(getattr(s, "decode", None)) for s in sources):
        from cliplab.data.decode import ImageDecoder  # image codecs, only for file-based sources

        # decoding straight to about the model's size (JPEG draft mode, one resize) is what
        # makes file-based sources fast; the transform then crops from that
        decode = ImageDecoder(image_size=image_size)
    stream = ImageTextStream(
        sources,
        decode=decode,
        transform=ImageTransform(image_size, config.data.augment),
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
