"""``cliplab embed --engine ray``: the embedding job on Ray Data.

Three stages, streamed with bounded memory and in order (``preserve_order``):

1. **read** (one task): the source's raw records from where the collection stopped, in
   batches of ``batch_size`` (bytes only: cheap);
2. **decode** (CPU tasks, as many as the cluster's CPUs or ``workers``): images decoded and
   preprocessed exactly as the local engine's loader workers do, one batch per task;
3. **encode** (model actors: one per GPU when the cluster has GPUs, else one CPU actor):
   image and caption features, computed by the same function as the local engine.

The driver writes the parts, ids, metadata and failures exactly as a local run does, so the
collection is the same; resuming works the same way. The model travels to the actors
through Ray's object store (a runtime that cannot be pickled, such as an ONNX Runtime
session, runs with the local engine only).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from cliplab.data.sources import SourceSpec
from cliplab.search.batches import decode_batch, encode_batch, records

__all__ = ["encoded_batches"]


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError("the ray engine needs Ray Data: pip install 'cliplab[ray]'") from e
    return ray


class _Reader:
    def __init__(self, spec: SourceSpec, start: int, batch_size: int) -> None:
        self.spec, self.start, self.batch_size = spec, start, batch_size

    def __call__(self, _: dict[str, Any]) -> Iterator[dict[str, Any]]:
        batch: list[Any] = []
        for record, path in records(self.spec.open(), self.start, lambda _: True):
            batch.append((record, path))
            if len(batch) == self.batch_size:
                yield {"raw": [pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)]}
                batch = []
        if batch:
            yield {"raw": [pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)]}


def _decoder(preprocess: Callable[[Any], torch.Tensor], captions: bool) -> Callable:
    def decode_rows(rows: dict[str, Any]) -> dict[str, Any]:
        out = []
        for blob in rows["raw"]:
            raw = pickle.loads(blob)  # noqa: S301 - the reader stage's own output
            batch = decode_batch(raw, preprocess, captions)
            out.append(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        return {"decoded": out}

    return decode_rows


class _Encoder:
    def __init__(self, model: Any, captions: bool, dim: int, gpu: bool) -> None:
        model = _ray().get(model)  # the object store's copy, fetched once per actor
        if gpu:
            model = model.to("cuda")
        self.model = model.eval()
        self.captions, self.dim = captions, dim

    def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
        out = []
        for blob in rows["decoded"]:
            batch = pickle.loads(blob)  # noqa: S301 - the decode stage's own output
            out.append(pickle.dumps(encode_batch(self.model, batch, self.captions, self.dim)))
        return {"encoded": out}


def encoded_batches(
    spec: SourceSpec,
    preprocess: Callable[[Any], torch.Tensor],
    model: torch.nn.Module,
    start: int,
    batch_size: int,
    captions: bool,
    dim: int,
    address: str | None = None,
    workers: int = 0,
) -> Iterator[tuple[list[Any], np.ndarray | None, np.ndarray | None]]:
    """``(items, image features, caption features)`` per batch, in source order, computed on
    the Ray cluster (started locally unless ``address`` names one or one is connected)."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        ray.init(address=address, **options) if address else ray.init(**options)
        started = True
    try:
        try:
            model_ref = ray.put(model)
        except Exception as e:  # noqa: BLE001 - whatever the pickler raises
            raise ValueError(
                f"this model cannot be sent to Ray actors ({e}); use --runtime torch or bf16, "
                "or the local engine"
            ) from e
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        ds = ray.data.from_items([{"start": start}])
        ds = ds.map_batches(
            _Reader,
            fn_constructor_kwargs={"spec": spec, "start": start, "batch_size": batch_size},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=1),
        )
        ds = ds.map_batches(
            _decoder(preprocess, captions),
            batch_size=1,
            compute=ray.data.TaskPoolStrategy(size=workers or cpus),
        )
        ds = ds.map_batches(
            _Encoder,
            fn_constructor_kwargs={
                "model": model_ref,
                "captions": captions,
                "dim": dim,
                "gpu": gpus > 0,
            },
            batch_size=1,
            num_gpus=1 if gpus else 0,
            compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
        )
        for row in ds.iter_rows():
            yield pickle.loads(row["encoded"])  # noqa: S301 - the encode stage's own output
    finally:
        if started:
            ray.shutdown()
