"""Periodic evaluation during training: the hook protocol and a built-in retrieval evaluator.

An evaluator is any callable ``(model, step) -> {"name": value, ...}``. The trainer calls
each one every ``eval.interval`` steps and at the end, on rank 0, with the bare ``CLIP``
model in eval mode and gradients off; the results are logged as ``kind="eval"`` records.
Other packages plug in through ``eval.hooks = ["package.module:factory"]`` in the config,
where ``factory(config) -> Evaluator``; or pass evaluators to ``Trainer`` directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from cliplab.models import CLIP
from cliplab.tokenizer import tokenize

if TYPE_CHECKING:
    from cliplab.train.config import Config

#: ``(model, step) -> metrics``; called on rank 0 with the model in eval mode.
Evaluator = Callable[[CLIP, int], dict[str, float]]


def paired_retrieval_metrics(
    image_features: torch.Tensor, text_features: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Recall@k for N paired, normalised features (pair i is image i with text i).

    ``text_to_image_top{k}``: fraction of captions whose image is among the k most similar
    images; ``image_to_text_top{k}`` the converse; ``chance_top1`` is 1/N.
    """
    n = image_features.shape[0]
    sims = text_features @ image_features.t()  # (N texts, N images)
    target = torch.arange(n, device=sims.device)
    # rank of the right answer: how many other candidates score at least as high (ties
    # count against it, so a model with constant features scores 0, not 100%)
    right = sims[target, target][:, None]  # (N, 1)
    t2i_rank = (sims >= right).sum(dim=1) - 1
    i2t_rank = (sims.t() >= right).sum(dim=1) - 1
    metrics = {"chance_top1": 1.0 / n}
    for k in ks:
        metrics[f"text_to_image_top{k}"] = float((t2i_rank < k).float().mean())
        metrics[f"image_to_text_top{k}"] = float((i2t_rank < k).float().mean())
    return metrics


class RetrievalEvaluator:
    """Text->image and image->text retrieval over held-out (image, caption) pairs.

    Images are preprocessed and captions tokenized once, up front; each call embeds them
    with the current weights.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Any, str]],
        transform: Callable[[Any], torch.Tensor],
        context_length: int = 77,
        batch_size: int = 256,
        prefix: str = "val",
    ) -> None:
        if not pairs:
            raise ValueError("RetrievalEvaluator needs at least one pair")
        self.images = torch.stack([transform(image) for image, _ in pairs])  # (N, 3, S, S)
        self.tokens = tokenize(
            [caption for _, caption in pairs], context_length=context_length, truncate=True
        )
        self.batch_size = batch_size
        self.prefix = prefix

    @torch.no_grad()
    def __call__(self, model: CLIP, step: int) -> dict[str, float]:
        device = model.logit_scale.device
        image_parts, text_parts = [], []
        for start in range(0, len(self.images), self.batch_size):
            images = self.images[start : start + self.batch_size].to(device, model.dtype)
            tokens = self.tokens[start : start + self.batch_size].to(device)
            image_parts.append(model.encode_image(images, normalize=True).float())
            text_parts.append(model.encode_text(tokens, normalize=True).float())
        metrics = paired_retrieval_metrics(torch.cat(image_parts), torch.cat(text_parts))
        return {f"{self.prefix}_{k}": v for k, v in metrics.items()}


def synthetic_retrieval_evaluator(
    num_pairs: int,
    image_size: int,
    context_length: int = 77,
    batch_size: int = 256,
    source_image_size: int = 64,
) -> RetrievalEvaluator:
    """Retrieval over the first ``num_pairs`` scenes of the synthetic set's ``val`` split
    (never seen in training: the split picks disjoint scenes)."""
    from cliplab.data import SyntheticSource
    from cliplab.transforms import EvalTransform

    source = SyntheticSource(num_pairs, split="val", image_size=source_image_size)
    return RetrievalEvaluator(
        source.pairs(num_pairs),
        EvalTransform(image_size),
        context_length,
        batch_size,
        prefix="synthetic",
    )


def load_hook(spec: str, config: Config) -> Evaluator:
    """Build the evaluator that ``"package.module:factory"`` names: ``factory(config)``."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"eval hook {spec!r} cannot be loaded: {e}") from e
    evaluator = factory(config)
    if not callable(evaluator):
        raise ValueError(f"eval hook {spec!r} did not return a callable evaluator")
    return evaluator


def build_evaluators(config: Config, image_size: int, context_length: int) -> list[Evaluator]:
    """The evaluators a config asks for: held-out synthetic retrieval, then the hooks."""
    evaluators: list[Evaluator] = []
    if config.eval.synthetic_pairs:
        synthetic = [s for s in config.data.sources if s.get("kind") == "synthetic"]
        source_size = int(synthetic[0].get("image_size", 64)) if synthetic else 64
        evaluators.append(
            synthetic_retrieval_evaluator(
                config.eval.synthetic_pairs,
                image_size,
                context_length,
                config.eval.batch_size,
                source_size,
            )
        )
    evaluators += [load_hook(spec, config) for spec in config.eval.hooks]
    return evaluators
