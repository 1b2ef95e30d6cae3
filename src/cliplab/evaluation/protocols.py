"""The paper's protocols on one model: each takes a :class:`FeatureStore` and data sets and
returns a JSON-ready dict. The CLI and the report call these; features are computed once
per model and set (the store), whatever the number of protocols.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cliplab.evaluation.datasets import ClassificationSet, RetrievalSet
from cliplab.evaluation.features import FeatureStore
from cliplab.evaluation.fewshot import DEFAULT_SHOTS, few_shot_curve
from cliplab.evaluation.linear_probe import Backend, linear_probe, stratified_split
from cliplab.evaluation.metrics import classification_metrics
from cliplab.evaluation.prompts import default_template_sets, prompt_ablation
from cliplab.evaluation.retrieval import retrieval_metrics
from cliplab.evaluation.robustness import EvalSplit, align_to_source, robustness_study
from cliplab.zeroshot import load_templates, logit_scale_of, zero_shot_logits

__all__ = [
    "ProbeData",
    "Suite",
    "probe_data",
    "resolve_templates",
    "run_fewshot",
    "run_linear_probe",
    "run_prompts",
    "run_retrieval",
    "run_robustness",
    "run_suite",
    "run_zeroshot",
]


def resolve_templates(spec: str | Sequence[str] | None, dataset: ClassificationSet) -> list[str]:
    """Templates from a spec: None or ``"dataset"`` -> the set's own (else ``photo``); a
    bundled name or JSON path -> that file; a list -> itself."""
    if spec is None or spec == "dataset":
        return list(dataset.templates) if dataset.templates else load_templates("photo")
    if isinstance(spec, str):
        return load_templates(spec)
    return list(spec)


def majority_fraction(labels: Sequence[int]) -> float:
    """Accuracy of always answering the most frequent class (the floor for imbalanced sets)."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long))
    return float(counts.max()) / max(1, len(labels))


def _labels(dataset: ClassificationSet) -> torch.Tensor:
    return torch.as_tensor(dataset.labels, dtype=torch.long)


def run_zeroshot(
    store: FeatureStore,
    dataset: ClassificationSet,
    templates: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Zero-shot metrics of the store's model on ``dataset`` (plus chance level)."""
    chosen = resolve_templates(templates, dataset)
    weights = store.classifier(dataset.classnames, chosen)
    logits = zero_shot_logits(store.dataset(dataset), weights, logit_scale_of(store.model))
    metrics = classification_metrics(logits, dataset.labels, dataset.classnames)
    return {
        "protocol": "zeroshot",
        "dataset": dataset.name,
        "templates": len(chosen),
        "template_examples": chosen[:3],
        "chance": 1.0 / dataset.num_classes,
        "majority": majority_fraction(dataset.labels),
        **metrics,
    }


class ProbeData:
    """Train and test features for a probe: from two sets, or a stratified split of one."""

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        test_x: torch.Tensor,
        test_y: torch.Tensor,
        test_set: ClassificationSet,
        note: str,
        test_index: list[int] | None = None,
    ) -> None:
        self.train_x, self.train_y = train_x, train_y
        self.test_x, self.test_y = test_x, test_y
        self.test_set = test_set
        self.note = note
        self.test_index = test_index


def probe_data(
    store: FeatureStore,
    test: ClassificationSet,
    train: ClassificationSet | None = None,
    *,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> ProbeData:
    """Features for probing: ``train`` -> ``test``; without ``train``, ``test`` is split per
    class (``test_fraction`` held out for testing; classes with one image stay in train)."""
    x, y = store.dataset(test), _labels(test)
    if train is not None:
        if list(train.classnames) != list(test.classnames):
            raise ValueError(f"{train.name} and {test.name} have different class names")
        note = f"probe fitted on {train.name} ({len(train)} images), tested on {test.name}"
        return ProbeData(store.dataset(train), _labels(train), x, y, test, note)
    fit, held = stratified_split(y, test_fraction, seed)
    if not held:
        raise ValueError(f"{test.name}: every class has one image; give a training set")
    note = (
        f"no training set given: {test.name} split per class into {len(fit)} probe-training "
        f"and {len(held)} test images (seed {seed})"
    )
    return ProbeData(x[fit], y[fit], x[held], y[held], test, note, test_index=held)


def run_linear_probe(
    store: FeatureStore,
    test: ClassificationSet,
    train: ClassificationSet | None = None,
    *,
    seed: int = 0,
    backend: Backend = "torch",
    max_iter: int = 1000,
    C: float | None = None,
    templates: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """A full linear probe (C searched on a validation split of the training features) with
    zero-shot accuracy on the same test images for comparison."""
    data = probe_data(store, test, train, seed=seed)
    result = linear_probe(
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        num_classes=test.num_classes,
        classnames=test.classnames,
        C=C,
        seed=seed,
        backend=backend,
        max_iter=max_iter,
    )
    weights = store.classifier(test.classnames, resolve_templates(templates, test))
    zs = classification_metrics(zero_shot_logits(data.test_x, weights), data.test_y)
    return {
        "protocol": "linear-probe",
        "dataset": test.name,
        "backend": backend,
        "setup": data.note,
        "zero_shot_top1": zs["top1"],
        **result.to_dict(),
    }


def run_fewshot(
    store: FeatureStore,
    test: ClassificationSet,
    train: ClassificationSet | None = None,
    *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    seed: int = 0,
    backend: Backend = "torch",
    max_iter: int = 1000,
    C: float | None = None,
    templates: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """k-shot probe curve against zero-shot on the same test images (Figure 6)."""
    data = probe_data(store, test, train, seed=seed)
    weights = store.classifier(test.classnames, resolve_templates(templates, test))
    zs = classification_metrics(zero_shot_logits(data.test_x, weights), data.test_y)["top1"]
    curve = few_shot_curve(
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        num_classes=test.num_classes,
        shots=shots,
        seeds=seeds,
        zero_shot=zs,
        C=C,
        backend=backend,
        max_iter=max_iter,
        progress=store.progress,
    )
    return {
        "protocol": "fewshot",
        "dataset": test.name,
        "setup": data.note,
        "chance": 1.0 / test.num_classes,
        **curve.to_dict(),
    }


def run_retrieval(store: FeatureStore, dataset: RetrievalSet) -> dict[str, Any]:
    """Recall@1/5/10 in both directions."""
    images = store.dataset(dataset)
    texts = store.texts(dataset.texts, desc=f"{dataset.name} captions")
    return {
        "protocol": "retrieval",
        "dataset": dataset.name,
        **retrieval_metrics(images, texts, dataset.text_to_image),
    }


def run_prompts(
    store: FeatureStore, dataset: ClassificationSet, ensemble: str | Sequence[str] = "imagenet80"
) -> dict[str, Any]:
    """The prompt-engineering ablation: bare label, one template, the set's own, an ensemble."""
    sets = default_template_sets(dataset.templates, ensemble)
    classifiers = {name: store.classifier(dataset.classnames, t) for name, t in sets.items()}
    result = prompt_ablation(
        store.dataset(dataset),
        dataset.labels,
        classifiers,
        template_counts={name: len(t) for name, t in sets.items()},
    )
    return {"protocol": "prompts", "dataset": dataset.name, **result}


def _split(store: FeatureStore, dataset: ClassificationSet, source: Sequence[str]) -> EvalSplit:
    keep, labels, classes, dropped = align_to_source(source, dataset)
    if not keep:
        raise ValueError(f"{dataset.name} shares no class name with the source set")
    return EvalSplit(dataset.name, store.dataset(dataset)[keep], labels, classes, dropped)


def run_robustness(
    store: FeatureStore,
    source: ClassificationSet,
    shifted: Sequence[ClassificationSet],
    *,
    source_test: ClassificationSet | None = None,
    templates: str | Sequence[str] | None = None,
    seed: int = 0,
    backend: Backend = "torch",
    max_iter: int = 1000,
    C: float | None = None,
) -> dict[str, Any]:
    """Zero-shot vs a source-fitted probe under distribution shift (see ``robustness``).

    The probe trains on ``source`` (all of it when ``source_test`` is the in-distribution
    test set, else on a per-class split of ``source`` whose other part is the test set).
    """
    classnames = list(source.classnames)
    validation = None
    if source_test is not None:
        train_x, train_y = store.dataset(source), _labels(source)
        id_split = _split(store, source_test, classnames)
        note = f"probe fitted on all of {source.name}; in-distribution test: {source_test.name}"
        _, held = stratified_split(train_y, 0.2, seed)
        if not held and C is None:  # one image per class: validate on part of the ID set
            test_idx, val_idx = stratified_split(id_split.labels, 0.5, seed)
            if not val_idx:
                raise ValueError(
                    f"{source.name} has one image per class and {source_test.name} too: "
                    "no validation split for the probe's C; pass C"
                )
            validation = EvalSplit(
                f"{source_test.name} (validation)",
                id_split.features[val_idx],
                id_split.labels[val_idx],
                id_split.classes,
            )
            id_split = EvalSplit(
                f"{source_test.name} (held out)",
                id_split.features[test_idx],
                id_split.labels[test_idx],
                id_split.classes,
                id_split.dropped,
            )
            note += (
                f" ({source.name} has one image per class, so the probe's C is chosen on "
                f"{len(val_idx)} images of {source_test.name}, split per class, and the "
                f"in-distribution test is its other {len(test_idx)} images)"
            )
    else:
        data = probe_data(store, source, None, seed=seed)
        train_x, train_y = data.train_x, data.train_y
        id_split = EvalSplit(
            f"{source.name} (held out)",
            data.test_x,
            data.test_y,
            list(range(len(classnames))),
        )
        note = data.note
    weights = store.classifier(classnames, resolve_templates(templates, source))
    study = robustness_study(
        classnames=classnames,
        train_x=train_x,
        train_y=train_y,
        zero_shot_weights=weights,
        in_distribution=id_split,
        shifted=[_split(store, s, classnames) for s in shifted],
        validation=validation,
        C=C,
        seed=seed,
        backend=backend,
        max_iter=max_iter,
    )
    return {"protocol": "robustness", "source": source.name, "setup": note, **study}


def finite(x: float | None) -> bool:
    """True for a real number (not None, NaN or infinite)."""
    return x is not None and math.isfinite(x)


@dataclass
class Suite:
    """What a report runs on each model: sets per protocol and shared settings.

    ``linear_probe`` and ``fewshot`` hold (test set, training set or None) pairs;
    ``robustness`` holds (source, in-distribution test or None, shifted sets) triples.
    """

    zeroshot: list[ClassificationSet] = field(default_factory=list)
    prompts: list[ClassificationSet] = field(default_factory=list)
    linear_probe: list[tuple[ClassificationSet, ClassificationSet | None]] = field(
        default_factory=list
    )
    fewshot: list[tuple[ClassificationSet, ClassificationSet | None]] = field(default_factory=list)
    retrieval: list[RetrievalSet] = field(default_factory=list)
    robustness: list[
        tuple[ClassificationSet, ClassificationSet | None, list[ClassificationSet]]
    ] = field(default_factory=list)
    templates: str | None = None
    ensemble: str = "imagenet80"
    shots: Sequence[int] = DEFAULT_SHOTS
    seeds: Sequence[int] = (0, 1, 2)
    backend: Backend = "torch"
    max_iter: int = 1000
    C: float | None = None  # fixed probe regularisation; None: the paper's search

    def is_empty(self) -> bool:
        return not (
            self.zeroshot
            or self.prompts
            or self.linear_probe
            or self.fewshot
            or self.retrieval
            or self.robustness
        )


def run_suite(store: FeatureStore, suite: Suite) -> list[dict[str, Any]]:
    """Every protocol of ``suite`` on the store's model, in a fixed order."""
    results: list[dict[str, Any]] = []
    for d in suite.zeroshot:
        results.append(run_zeroshot(store, d, suite.templates))
    for d in suite.prompts:
        results.append(run_prompts(store, d, suite.ensemble))
    probe_kw = {
        "backend": suite.backend,
        "max_iter": suite.max_iter,
        "templates": suite.templates,
        "C": suite.C,
    }
    for test, train in suite.linear_probe:
        results.append(run_linear_probe(store, test, train, **probe_kw))
    for test, train in suite.fewshot:
        results.append(
            run_fewshot(store, test, train, shots=suite.shots, seeds=suite.seeds, **probe_kw)
        )
    for d in suite.retrieval:
        results.append(run_retrieval(store, d))
    for source, source_test, shifted in suite.robustness:
        results.append(run_robustness(store, source, shifted, source_test=source_test, **probe_kw))
    return results
