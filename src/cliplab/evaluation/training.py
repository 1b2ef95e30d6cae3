"""Evaluation during training: any protocol of the registry on the current weights.

An evaluator is any callable ``(model, step) -> {"name": value, ...}``. The trainer calls
each one every ``eval.interval`` steps and at the end, on rank 0, with the bare model, and
logs the results as ``kind="eval"`` records; :func:`build_evaluators` makes the ones a
training config asks for (``[[eval.sets]]`` tables and ``eval.synthetic_pairs``), and
``Trainer(evaluators=...)`` takes more.
:class:`ProtocolEvaluator` runs a protocol exactly as ``cliplab eval`` does (same code, same
metrics, same tie rule) on a store that holds no disk cache, since the weights change between
calls. Images are preprocessed once per image size and kept in memory (up to
``PIXEL_CACHE_BYTES``); the model's train/eval mode is restored afterwards. A training
config names its sets in ``[[eval.sets]]`` tables, which :func:`evaluator_from_spec` reads::

    [[eval.sets]]
    protocol = "zeroshot"          # any protocol of cliplab.evaluation.registry
    dataset = "emoji-google"       # a set under <data.dir>/eval, or a path
    max_images = 500               # optional: a fixed random subset
    templates = "emoji"            # optional: the protocol's options
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cliplab.data.evalsets import (
    ClassificationSet,
    RetrievalSet,
    load_classification,
    load_retrieval,
)
from cliplab.data.images import open_image
from cliplab.data.stream import BadSample
from cliplab.encode import FeatureStore, Tokenizer, unwrap_model
from cliplab.evaluation.protocol import Protocol
from cliplab.evaluation.registry import get

__all__ = [
    "PIXEL_CACHE_BYTES",
    "Evaluator",
    "ProtocolEvaluator",
    "build_evaluators",
    "evaluator_from_spec",
    "resolve_evalset",
    "synthetic_retrieval_evaluator",
]

log = logging.getLogger("cliplab.evaluation")

#: Preprocessed images are kept in memory up to this many bytes per evaluator.
PIXEL_CACHE_BYTES = 512 * 2**20
#: Keys of an ``[[eval.sets]]`` table that are not the protocol's inputs or options.
SPEC_KEYS = ("protocol", "max_images", "seed", "prefix")

#: ``(model, step) -> metrics``; called on rank 0.
Evaluator = Callable[[torch.nn.Module, int], dict[str, float]]
EvalSet = ClassificationSet | RetrievalSet


def _subsample(dataset: EvalSet, max_images: int | None, seed: int) -> EvalSet:
    n = len(dataset)
    if max_images is None or max_images >= n:
        return dataset
    generator = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(n, generator=generator)[:max_images].tolist())
    return dataset.subset(keep)


class ProtocolEvaluator:
    """``(model, step) -> {"<prefix><metric>": value}``: one protocol on the current weights.

    ``inputs`` are the protocol's input sets by name (loaded sets, lists for ``many``
    inputs); ``options`` its options (a mapping or its ``Options``); ``max_images``
    evaluates a fixed random subset of each set (seeded). The prefix defaults to
    ``"<protocol>_<first set's name>_"`` (``zeroshot_emoji-google_top1``).
    """

    def __init__(
        self,
        protocol: str | Protocol,
        inputs: Mapping[str, Any],
        options: Any = None,
        *,
        max_images: int | None = None,
        seed: int = 0,
        prefix: str | None = None,
        batch_size: int = 256,
        tokenizer: Tokenizer | None = None,
        transform: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.protocol = get(protocol) if isinstance(protocol, str) else protocol
        self.options = (
            options
            if isinstance(options, self.protocol.options)
            else self.protocol.make_options(options)
        )

        def sample(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, list | tuple):
                return [_subsample(v, max_images, seed) for v in value]
            return _subsample(value, max_images, seed)

        self.inputs = {name: sample(value) for name, value in inputs.items()}
        first = next(v for v in self.inputs.values() if v)
        first = first[0] if isinstance(first, list) else first
        self.prefix = prefix if prefix is not None else f"{self.protocol.name}_{first.name}_"
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.transform = transform
        self._pixels: dict[int, dict[str, Any]] = {}  # image size -> inputs with pixel tensors

    def _preprocess(self, model: torch.nn.Module) -> Callable[[Any], torch.Tensor]:
        if self.transform is not None:
            return self.transform
        from cliplab.transforms import EvalTransform

        return EvalTransform(int(getattr(model, "image_size", 224)))

    def _with_pixels(self, size: int, preprocess: Callable[[Any], torch.Tensor]) -> dict[str, Any]:
        """The inputs with each set's images preprocessed once per image size, while they
        fit in the budget (else the sets are returned as they are: preprocessed per call)."""
        if size in self._pixels:
            return self._pixels[size]
        budget = PIXEL_CACHE_BYTES

        def convert(dataset: EvalSet) -> EvalSet:
            nonlocal budget
            if isinstance(dataset.images, torch.Tensor) or budget <= 0:
                return dataset
            pixels, good, bad = [], [], []
            for i, image in enumerate(dataset.images):
                try:
                    pixels.append(preprocess(open_image(image)))
                    good.append(i)
                except BadSample as e:
                    bad.append(f"{image}: {e.reason}")
            if bad:  # evaluated on the readable images, said once
                log.warning(
                    "%s: %d image(s) left out: %s", dataset.name, len(bad), "; ".join(bad[:5])
                )
                dataset = dataset.subset(good)
            if not pixels:
                raise ValueError(f"{dataset.name}: no image can be read")
            stacked = torch.stack(pixels)
            budget -= stacked.numel() * stacked.element_size()
            return dataset.with_images(stacked) if budget >= 0 else dataset

        converted = {
            name: (
                [convert(v) for v in value]
                if isinstance(value, list)
                else (convert(value) if value is not None else None)
            )
            for name, value in self.inputs.items()
        }
        self._pixels = {size: converted}  # the newest image size only
        return converted

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        model = unwrap_model(model)
        was_training = model.training
        model.eval()
        try:
            preprocess = self._preprocess(model)
            inputs = self._with_pixels(int(getattr(model, "image_size", 0)), preprocess)
            store = FeatureStore(
                model,
                preprocess,
                self.tokenizer,
                batch_size=self.batch_size,
                progress=False,
                model_key=f"training-step-{step}",
            )
            result = self.protocol(store, self.options, **inputs)
        finally:
            model.train(was_training)
        return {f"{self.prefix}{k}": float(v) for k, v in result.scalars().items()}


def resolve_evalset(value: str | os.PathLike[str], data_dir: str | os.PathLike[str]) -> Path:
    """An evaluation set's directory: ``value`` itself when it exists, else the built set of
    that name under ``data_dir/eval``."""
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    built = Path(data_dir) / "eval" / str(value)
    if built.is_dir():
        return built
    raise FileNotFoundError(
        f"no evaluation set {str(value)!r}: not a directory, and {built} does not exist "
        "(build it with `cliplab data build`)"
    )


def evaluator_from_spec(
    spec: Mapping[str, Any],
    data_dir: str | os.PathLike[str] = "data",
    batch_size: int = 256,
    transform: Callable[[Any], torch.Tensor] | None = None,
) -> ProtocolEvaluator:
    """The evaluator an ``[[eval.sets]]`` table describes (see the module docstring);
    ``transform``: the model's evaluation preprocessing (default: CLIP's at its size)."""
    spec = dict(spec)
    if "protocol" not in spec:
        raise ValueError(f"every [[eval.sets]] table needs a 'protocol'; got {spec}")
    protocol = get(str(spec["protocol"]))
    loaders = {"classification": load_classification, "retrieval": load_retrieval}
    inputs: dict[str, Any] = {}
    for i in protocol.inputs:
        value = spec.pop(i.name, None)
        if value is None:
            if i.required:
                raise ValueError(f"[[eval.sets]] for {protocol.name} needs {i.name!r} ({i.help})")
            continue
        load = loaders[i.kind]
        if i.many:
            values = value if isinstance(value, list) else [value]
            inputs[i.name] = [load(resolve_evalset(v, data_dir)) for v in values]
        else:
            inputs[i.name] = load(resolve_evalset(value, data_dir))
    extra = {k: spec.pop(k) for k in SPEC_KEYS if k in spec}
    spec.pop("protocol", None)
    return ProtocolEvaluator(
        protocol,
        inputs,
        spec,  # what is left are the protocol's options (unknown names fail there)
        max_images=extra.get("max_images"),
        seed=int(extra.get("seed", 0)),
        prefix=extra.get("prefix"),
        batch_size=batch_size,
        transform=transform,
    )


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


def build_evaluators(
    sets: Sequence[Mapping[str, Any]],
    data_dir: str | os.PathLike[str] = "data",
    batch_size: int = 256,
    *,
    synthetic_pairs: int = 0,
    synthetic_image_size: int = 64,
    transform: Callable[[Any], torch.Tensor] | None = None,
) -> list[Evaluator]:
    """The evaluators of a training config (``[eval]``): retrieval on ``synthetic_pairs``
    held-out synthetic pairs (drawn at ``synthetic_image_size``), then one per ``[[eval.sets]]``
    table (sets by name under ``data_dir/eval`` or by path). Sets load now, so a missing one
    fails before training starts."""
    evaluators: list[Evaluator] = []
    if synthetic_pairs:
        evaluators.append(
            synthetic_retrieval_evaluator(synthetic_pairs, batch_size, synthetic_image_size)
        )
    evaluators += [evaluator_from_spec(t, data_dir, batch_size, transform) for t in sets]
    return evaluators
