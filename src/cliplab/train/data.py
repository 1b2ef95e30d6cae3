"""The training data pipeline built from ``[data]``: sources, decoders, an optional in-memory
cache, the one augmentation, tokenizer, loader.

Every ``[[data.sources]]`` table is a typed spec (:mod:`cliplab.data.sources`) that opens its
source and names its caption function; its optional ``weight`` sets the mixing proportion. Batches are deterministic for (seed, epoch, rank,
worker) and the loader's position is part of every checkpoint.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import torch

from cliplab.augment import Augment
from cliplab.data import ImageTextStream, StreamingLoader
from cliplab.data.cache import MemoryCache
from cliplab.data.sources import source_weights
from cliplab.tokenizer import tokenize
from cliplab.tokenizer.files import OPENAI, tokenizer_for
from cliplab.train.config import Config

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
    spawned workers, unlike a lambda): OpenAI's BPE, or the tokenizer a model's config names
    (a pretrained SigLIP's files: :func:`cliplab.tokenizer.files.tokenizer_for`)."""

    def __init__(self, context_length: int, model_config: Any = None) -> None:
        self.context_length = context_length
        self.model_config = model_config
        self._own: Any = None

    def __call__(self, captions: list[str]) -> torch.Tensor:
        spec = getattr(getattr(self.model_config, "text", None), "tokenizer", OPENAI)
        if spec == OPENAI:
            return tokenize(captions, context_length=self.context_length, truncate=True)
        if self._own is None:
            self._own = tokenizer_for(_ConfigHolder(self.model_config))
        return self._own(captions)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_own": None}


class _ConfigHolder:
    def __init__(self, config: Any) -> None:
        self.config = config


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
            # what makes file-based sources fast; the stream then squares and augments it
            out.append(
                ImageDecoder(
                    image_size=image_size,
                    caption_fn=spec.caption_function(),
                    exclude_labels=spec.excluded_labels(),
                )
            )
    return out


def build_loader(
    config: Config,
    image_size: int,
    context_length: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    model_config: Any = None,
    preprocess: dict[str, Any] | None = None,
) -> StreamingLoader:
    """This rank's loader of ``batch_size``-sample batches (the rank's share of the global
    batch): the one stream, behind an in-memory cache of decoded images when
    ``data.in_memory``, with the one augmentation (``[data.augment]``). ``model_config``
    names the tokenizer and ``preprocess`` the normalisation (``mean``, ``std``) of a
    pretrained model; the defaults are OpenAI's."""
    sources: list[Any] = [spec.open() for spec in config.data.sources]
    names = [s.name for s in sources]
    for i, source in enumerate(sources):  # samples go to their source's decoder by name
        if names.count(source.name) > 1:
            source.name = f"{source.name}-{i}"
    decoders = _decoders(config, sources, image_size)
    weights = source_weights(config.data.sources)
    if config.data.in_memory:
        sources = [
            MemoryCache(
                s, d, image_size, seed=config.train.seed, progress=lambda m: log.info("%s", m)
            )
            for s, d in zip(sources, decoders, strict=True)
        ]
        sizes = [s.num_samples() for s in sources]
        if sum(sizes) == 0:
            raise ValueError("no usable samples in any source (every sample was skipped)")
        if weights is not None:  # a source left empty by bad samples is drawn from no more
            weights = [w if n else 0.0 for w, n in zip(weights, sizes, strict=True)]
    stream = ImageTextStream(
        sources,
        decoders,
        Augment(
            config.data.augment,
            **{k: v for k, v in (preprocess or {}).items() if k in ("mean", "std")},
        ),
        TokenizeCaptions(context_length, model_config),
        batch_size,
        image_size=image_size,
        weights=weights,
        seed=config.train.seed,
        rank=rank,
        world_size=world_size,
        # a cache yields each pass in a fresh order already: a buffer would add nothing
        shuffle_buffer=1 if config.data.in_memory else config.data.shuffle_buffer,
        second_caption=bool(config.train.second_caption),
    )
    return StreamingLoader(
        stream,
        num_workers=config.data.workers,
        pin_memory=pin_memory,
        worker_init_fn=ignore_sigterm_in_worker,
    )
