"""Periodic evaluation during training, with the same protocols as ``cliplab eval``.

An evaluator is any callable ``(model, step) -> {"name": value, ...}``. The trainer calls
each one every ``eval.interval`` steps and at the end, on rank 0, with the bare ``CLIP``
model; the results are logged as ``kind="eval"`` records. The config's ``[[eval.sets]]``
tables become :class:`cliplab.evaluation.training.ProtocolEvaluator` objects (any protocol
of the registry), and ``eval.synthetic_pairs`` adds retrieval on held-out synthetic pairs;
``Trainer(evaluators=...)`` takes more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from cliplab.evaluation.datasets import RetrievalSet
from cliplab.evaluation.training import ProtocolEvaluator, evaluator_from_spec

if TYPE_CHECKING:
    from cliplab.train.config import Config

#: ``(model, step) -> metrics``; called on rank 0.
Evaluator = Callable[[torch.nn.Module, int], dict[str, float]]


def synthetic_retrieval_evaluator(
    num_pairs: int, batch_size: int = 256, source_image_size: int = 64
) -> ProtocolEvaluator:
    """Retrieval over the first ``num_pairs`` scenes of the synthetic set's ``val`` split
    (never seen in training: the split picks disjoint scenes), as ``synthetic_<metric>``."""
    from cliplab.data import SyntheticSource

    source = SyntheticSource(num_pairs, split="val", image_size=source_image_size)
    pairs = source.pairs(num_pairs)
    dataset = RetrievalSet(
        images=[image for image, _ in pairs],
        captions=[[caption] for _, caption in pairs],
        name="synthetic",
    )
    return ProtocolEvaluator(
        "retrieval", {"dataset": dataset}, batch_size=batch_size, prefix="synthetic_"
    )


def build_evaluators(config: Config) -> list[Evaluator]:
    """The evaluators a config asks for: held-out synthetic retrieval, then ``eval.sets``."""
    from cliplab.data.sources import SyntheticSpec

    evaluators: list[Evaluator] = []
    if config.eval.synthetic_pairs:
        synthetic = [s for s in config.data.sources if isinstance(s, SyntheticSpec)]
        source_size = synthetic[0].image_size if synthetic else 64
        evaluators.append(
            synthetic_retrieval_evaluator(
                config.eval.synthetic_pairs, config.eval.batch_size, source_size
            )
        )
    for table in config.eval.sets:
        evaluators.append(evaluator_from_spec(table, config.data.dir, config.eval.batch_size))
    return evaluators
