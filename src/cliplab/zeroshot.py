"""Zero-shot classification (Radford et al. 2021, section 3.1): class names become a classifier.

Each class name is put into every prompt template ("a photo of a {}."), embedded by the text
tower and L2-normalised; the class's embeddings are averaged (prompt ensembling) and
re-normalised. The (C, D) result is the weight matrix of a linear classifier on normalised
image features: ``logits = exp(t) * normalize(image_features) @ weights.T``::

    model, preprocess = cliplab.load("ViT-B-32.pt")
    weights = build_zero_shot_classifier(model, cliplab.tokenize, ["cat", "dog"],
                                         load_templates("imagenet80"))
    probs = zero_shot_logits(model.encode_image(images), weights).softmax(-1)

A class may also list *members* (sub-labels: "animal" is also "cat", "dog", ...): it is then
scored by the largest logit among its own name and its members', each a template ensemble
(hierarchical label sets, CHiLS, Novack et al. 2023): :func:`pool_members`.

The encoding itself (batches, caches, the ensemble) is :mod:`cliplab.encode`; templates are
:mod:`cliplab.templates`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cliplab.encode import FeatureStore, Tokenizer, encode_images, logit_scale_of
from cliplab.models import MAX_LOGIT_SCALE
from cliplab.templates import PLACEHOLDER, fill_template, list_templates, load_templates

__all__ = [
    "PLACEHOLDER",
    "ZeroShotHead",
    "build_zero_shot_classifier",
    "classify_images",
    "fill_template",
    "list_templates",
    "load_templates",
    "logit_scale_of",
    "member_names",
    "parse_labels",
    "pool_members",
    "zero_shot_logits",
]


@torch.no_grad()
def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Tokenizer | None,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    model_key: str | None = None,
) -> torch.Tensor:
    """The zero-shot classifier's weights (C, D): one unit-norm row per class, float32 on CPU.

    Texts are encoded in batches of ``batch_size`` across classes, without grad, under
    autocast on GPU, on ``device`` (default: the model's; the model must already be there).
    With ``cache_dir`` the result is stored under a key hashing the model's fingerprint (or
    ``model_key``), the tokenizer's kind, the class names and the templates.
    """
    store = FeatureStore(
        model,
        tokenizer=tokenizer,
        cache_dir=cache_dir,
        batch_size=batch_size,
        device=device,
        progress=progress,
        model_key=model_key,
    )
    return store.classifier(classnames, templates)


def zero_shot_logits(
    image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: float = MAX_LOGIT_SCALE
) -> torch.Tensor:
    """Logits (N, C): ``logit_scale * normalize(image_features) @ classifier.T``.

    The scale does not change the ranking; it sets how peaked the softmax probabilities are
    (pass :func:`logit_scale_of` for the model's own temperature).
    """
    image = F.normalize(image_features.float(), dim=-1)
    return logit_scale * image @ classifier.to(image.device, torch.float32).t()


def parse_labels(text: str) -> tuple[list[str], list[list[str]] | None]:
    """Labels typed by a person: comma- (or newline-) separated, stripped, empty ones dropped;
    at least one, no duplicates. A label written ``name=member|member`` lists its members
    (``None`` when no label does). ValueError says what is wrong."""
    labels: list[str] = []
    members: list[list[str]] = []
    for item in text.replace("\n", ",").split(","):
        name, _, rest = item.partition("=")
        name = name.strip()
        if not name:
            if rest.strip():
                raise ValueError(f"labels: members without a label name in {item.strip()!r}")
            continue
        labels.append(name)
        members.append([m.strip() for m in rest.split("|") if m.strip()])
    if not labels:
        raise ValueError("labels: give at least one, comma-separated")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"labels: duplicates: {', '.join(duplicates)}")
    return labels, (members if any(members) else None)


def member_names(
    classnames: Sequence[str], members: Sequence[Sequence[str]] | None
) -> tuple[list[str], torch.Tensor]:
    """Every name to embed (each class's own, then its members) and the class each belongs to
    (M,): the inputs of :func:`pool_members`. Without ``members``, the class names alone."""
    groups = [[c] for c in classnames]
    if members is not None:
        if len(members) != len(classnames):
            raise ValueError(f"{len(members)} member lists for {len(classnames)} classes")
        groups = [[c, *m] for c, m in zip(classnames, members, strict=True)]
    names = [n for group in groups for n in group]
    return names, torch.tensor([c for c, group in enumerate(groups) for _ in group])


def pool_members(logits: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class logits (N, C) from the logits of every name (N, M): each class's largest, over
    its own name and its members' (``owner``, from :func:`member_names`)."""
    pooled = logits.new_full((logits.shape[0], num_classes), float("-inf"))
    index = owner.to(logits.device).expand_as(logits)
    return pooled.scatter_reduce(1, index, logits, "amax")


@dataclass(frozen=True)
class ZeroShotHead:
    """A zero-shot classifier, the one way every caller builds and applies it: a
    prompt-ensemble row per class name and per member name (``weights``, (M, D) unit rows),
    the class each row belongs to (``owner``) and the model's temperature. A class's logit is
    the largest of its names' (itself and its members': hierarchical labels, as CHiLS).

    A model with a logit bias (SigLIP's) scores each label on its own, as it was trained:
    ``sigmoid(exp(t) * cos + b)``, probabilities that need not sum to one; others take the
    softmax over the labels. Rankings are the same either way."""

    weights: torch.Tensor  # (M, D)
    owner: torch.Tensor  # (M,)
    num_classes: int
    logit_scale: float
    logit_bias: float | None = None

    @classmethod
    def build(
        cls,
        store: FeatureStore,
        classnames: Sequence[str],
        templates: Sequence[str],
        members: Sequence[Sequence[str]] | None = None,
    ) -> ZeroShotHead:
        """The head of ``classnames`` (with their ``members``) in ``templates``, its text
        features from ``store`` (cached there)."""
        names, owner = member_names(classnames, members)
        weights = store.classifier(names, list(templates))
        return cls(weights, owner, len(classnames), store.logit_scale, store.logit_bias)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C) of image features (N, D)."""
        logits = zero_shot_logits(image_features, self.weights, self.logit_scale)  # (N, M)
        if len(self.owner) == self.num_classes:
            return logits
        return pool_members(logits, self.owner, self.num_classes)

    def probs(self, image_features: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C): the softmax of :meth:`logits`, or for a model with a
        logit bias (SigLIP) each label's ``sigmoid(logit + bias)``."""
        logits = self.logits(image_features)
        if self.logit_bias is not None:
            return torch.sigmoid(logits + self.logit_bias)
        return logits.softmax(dim=-1)


@torch.no_grad()
def classify_images(
    model: torch.nn.Module,
    preprocess: Callable[[Any], torch.Tensor],
    images: Sequence[Any],
    labels: Sequence[str],
    *,
    templates: Sequence[str] = ("a photo of a {}.",),
    tokenizer: Tokenizer | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    members: Sequence[Sequence[str]] | None = None,
) -> torch.Tensor:
    """Class probabilities (N, len(labels)) of images (PIL images or paths): the everyday use.

    Softmax over ``exp(t) * cosine similarity``, with the model's own temperature (for a
    model with a logit bias, SigLIP's, each label's sigmoid: :class:`ZeroShotHead`). With
    ``members`` (one list of sub-labels per label) a label scores as its best member or itself.
    """
    store = FeatureStore(model, tokenizer=tokenizer, cache_dir=cache_dir, device=device)
    head = ZeroShotHead.build(store, labels, templates, members)
    features = encode_images(model, images, preprocess, batch_size=batch_size, device=device)
    return head.probs(features)
