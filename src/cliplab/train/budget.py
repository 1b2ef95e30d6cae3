"""How long a training step takes here: what fits a run to a time budget (``cliplab demo``,
``cliplab finetune``)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any


def time_steps(config: Any, warmup: int = 8, timed: int = 16) -> float:
    """Pairs per second of ``config``'s training step on this machine, data loading
    included: ``warmup`` untimed steps (the first few run up to 1.4x slower: allocator and
    thread-pool warm-up), then the median of ``timed`` timed ones. Nothing is saved."""
    from cliplab.train import Trainer

    trainer = Trainer(config.replace(eval=dataclasses.replace(config.eval, sets=())))
    batches = iter(trainer.loader)
    for _ in range(warmup):
        batch = next(batches)
        trainer.train_step(batch.images, batch.tokens, batch.second_tokens)
    seconds = []
    for _ in range(timed):
        start = time.perf_counter()
        batch = next(batches)
        trainer.train_step(batch.images, batch.tokens, batch.second_tokens)
        seconds.append(time.perf_counter() - start)
    return config.data.batch_size / statistics.median(seconds)
