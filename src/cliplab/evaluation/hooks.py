"""Evaluators for the training loop: zero-shot and retrieval as ``(model, step) -> metrics``.

``cliplab train`` calls every evaluator each ``eval.interval`` steps with the current model
(see ``cliplab.train.evaluation``). These adapters preprocess the images once (per image
size), then, at each call, rebuild the zero-shot classifier from the current text tower and
embed the images, without grad and with the model's train/eval mode restored afterwards::

    from cliplab.evaluation import ZeroShotHook, RetrievalHook, load_classification
    hooks = [ZeroShotHook(load_classification("data/evalsets/emoji-google"), max_images=500)]
    trainer = Trainer(config, evaluators=hooks)          # or through a config:
    # eval.hooks = ["cliplab.evaluation.hooks:from_env"] with CLIPLAB_EVAL_ZEROSHOT=set1:set2

No disk caches are used here: the weights change between calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cliplab.evaluation.datasets import (
    ClassificationSet,
    RetrievalSet,
    load_classification,
    load_retrieval,
)
from cliplab.evaluation.features import open_image
from cliplab.evaluation.metrics import confusion_matrix, mean_per_class_recall, topk_accuracy
from cliplab.evaluation.retrieval import retrieval_metrics
from cliplab.zeroshot import (
    Tokenizer,
    autocast_for,
    build_zero_shot_classifier,
    encode_texts,
    load_templates,
    model_device,
    model_dtype,
    zero_shot_logits,
)

__all__ = ["CombinedHook", "RetrievalHook", "ZeroShotHook", "from_env"]

#: Preprocessed images are kept in memory up to this many bytes, else redone at each call.
PIXEL_CACHE_BYTES = 512 * 2**20


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _subsample(n: int, max_images: int | None, seed: int) -> list[int]:
    if max_images is None or max_images >= n:
        return list(range(n))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:max_images].tolist())


class _ImageHook:
    """Shared image handling: subsample, preprocess once per image size, embed per call."""

    def __init__(
        self,
        images: Sequence[Any],
        transform: Callable[[Any], torch.Tensor] | None,
        batch_size: int,
    ) -> None:
        self._images = images
        self._transform = transform
        self._pixels: tuple[int, torch.Tensor] | None = None
        self.batch_size = batch_size

    def _preprocess(self, model: torch.nn.Module) -> Callable[[Any], torch.Tensor]:
        if self._transform is not None:
            return self._transform
        from cliplab.transforms import EvalTransform

        return EvalTransform(int(getattr(model, "image_size", 224)))

    def _pixel_batches(self, model: torch.nn.Module) -> Any:
        size = int(getattr(model, "image_size", 0))
        if self._pixels is not None and self._pixels[0] == size:
            tensor = self._pixels[1]
            for start in range(0, tensor.shape[0], self.batch_size):
                yield tensor[start : start + self.batch_size]
            return
        preprocess = self._preprocess(model)
        parts = []
        for start in range(0, len(self._images), self.batch_size):
            chunk = self._images[start : start + self.batch_size]
            batch = torch.stack([preprocess(open_image(im)) for im in chunk])
            parts.append(batch)
            yield batch
        total = sum(p.numel() * p.element_size() for p in parts)
        if total <= PIXEL_CACHE_BYTES:
            self._pixels = (size, torch.cat(parts))

    @torch.no_grad()
    def _image_features(self, model: torch.nn.Module) -> torch.Tensor:
        device, dtype = model_device(model), model_dtype(model)
        out = []
        for batch in self._pixel_batches(model):
            with autocast_for(device):
                out.append(model.encode_image(batch.to(device, dtype)).float().cpu())
        return torch.cat(out)


class ZeroShotHook(_ImageHook):
    """Zero-shot top-1, top-5 and mean per-class recall on a classification set.

    ``templates``: a list, a bundled set's name, or None for the set's own templates (else
    "a photo of a {}."). ``max_images`` evaluates a fixed random subset (seeded) to bound
    the cost per call. Keys are ``<prefix>top1`` etc.; ``prefix`` defaults to
    ``"zeroshot_<set name>_"``.
    """

    def __init__(
        self,
        dataset: ClassificationSet,
        *,
        templates: Sequence[str] | str | None = None,
        tokenizer: Tokenizer | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        batch_size: int = 256,
        max_images: int | None = None,
        seed: int = 0,
        prefix: str | None = None,
    ) -> None:
        keep = _subsample(len(dataset), max_images, seed)
        super().__init__([dataset.images[i] for i in keep], transform, batch_size)
        self.labels = torch.as_tensor([dataset.labels[i] for i in keep], dtype=torch.long)
        self.classnames = list(dataset.classnames)
        if isinstance(templates, str):
            templates = load_templates(templates)
        self.templates = list(templates or dataset.templates or load_templates("photo"))
        self.tokenizer = tokenizer
        self.prefix = prefix if prefix is not None else f"zeroshot_{dataset.name}_"

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        model = _unwrap(model)
        was_training = model.training
        model.eval()
        try:
            weights = build_zero_shot_classifier(
                model, self.tokenizer, self.classnames, self.templates, batch_size=self.batch_size
            )
            logits = zero_shot_logits(self._image_features(model), weights)
        finally:
            model.train(was_training)
        confusion = confusion_matrix(logits.argmax(1), self.labels, len(self.classnames))
        return {
            f"{self.prefix}top1": topk_accuracy(logits, self.labels, 1),
            f"{self.prefix}top5": topk_accuracy(logits, self.labels, 5),
            f"{self.prefix}mean_per_class_recall": mean_per_class_recall(confusion),
        }


class RetrievalHook(_ImageHook):
    """Image->text and text->image Recall@1/5/10 on a retrieval set (any caption is a hit)."""

    def __init__(
        self,
        dataset: RetrievalSet,
        *,
        tokenizer: Tokenizer | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
        batch_size: int = 256,
        max_images: int | None = None,
        seed: int = 0,
        prefix: str | None = None,
    ) -> None:
        keep = _subsample(len(dataset), max_images, seed)
        super().__init__([dataset.images[i] for i in keep], transform, batch_size)
        self.captions = [dataset.captions[i] for i in keep]
        self.tokenizer = tokenizer
        self.prefix = prefix if prefix is not None else f"retrieval_{dataset.name}_"

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        model = _unwrap(model)
        was_training = model.training
        model.eval()
        try:
            texts = [c for caps in self.captions for c in caps]
            owner = [i for i, caps in enumerate(self.captions) for _ in caps]
            text_features = encode_texts(model, self.tokenizer, texts, batch_size=self.batch_size)
            image_features = self._image_features(model)
        finally:
            model.train(was_training)
        metrics = retrieval_metrics(image_features, text_features, owner)
        return {
            f"{self.prefix}{k}": float(v)
            for k, v in metrics.items()
            if "R@" in k or k == "mean_recall"
        }


class CombinedHook:
    """Several evaluators as one: their metrics merged into one dict."""

    def __init__(self, hooks: Sequence[Callable[[torch.nn.Module, int], dict[str, float]]]):
        self.hooks = list(hooks)

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        merged: dict[str, float] = {}
        for hook in self.hooks:
            merged.update(hook(model, step))
        return merged


def _paths(variable: str) -> list[str]:
    return [p for p in os.environ.get(variable, "").split(os.pathsep) if p]


def from_env(config: Any = None) -> CombinedHook:
    """A training evaluator from environment variables, for ``eval.hooks`` in a config::

        eval.hooks = ["cliplab.evaluation.hooks:from_env"]
        CLIPLAB_EVAL_ZEROSHOT=data/evalsets/emoji-google:data/evalsets/fashion-mnist-test
        CLIPLAB_EVAL_RETRIEVAL=data/evalsets/tuxpaint-retrieval
        CLIPLAB_EVAL_MAX_IMAGES=1000            (optional, per set)

    ``config`` (the training config) is accepted for the hook protocol and not read.
    """
    max_images = (
        int(os.environ["CLIPLAB_EVAL_MAX_IMAGES"])
        if "CLIPLAB_EVAL_MAX_IMAGES" in os.environ
        else None
    )
    hooks: list[Callable[[torch.nn.Module, int], dict[str, float]]] = []
    for path in _paths("CLIPLAB_EVAL_ZEROSHOT"):
        hooks.append(ZeroShotHook(load_classification(path), max_images=max_images))
    for path in _paths("CLIPLAB_EVAL_RETRIEVAL"):
        hooks.append(RetrievalHook(load_retrieval(path), max_images=max_images))
    if not hooks:
        raise ValueError(
            "cliplab.evaluation.hooks:from_env needs CLIPLAB_EVAL_ZEROSHOT and/or "
            "CLIPLAB_EVAL_RETRIEVAL (evaluation-set directories separated by os.pathsep)"
        )
    return CombinedHook(hooks)
