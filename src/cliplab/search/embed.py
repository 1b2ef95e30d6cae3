"""``cliplab embed``: a collection of images (and their captions) -> embeddings on disk.

Any source the data layer opens (a folder of images, recursively; CSV/Parquet manifests;
WebDataset shards) is read in order; worker processes read and decode images while the main
process runs the model, so decoding overlaps encoding. Images are decoded by the training
decoder (:meth:`cliplab.data.decode.ImageDecoder.image`: upright, transparency on white) and
go through the model's own preprocessing; embeddings are L2-normalised and written in parts
(see :mod:`cliplab.search.collection`). A bad record (missing file, truncated or non-image
data, a decompression bomb, a malformed shard member) is skipped and counted by the
decoder's reason; a killed run resumes after its last complete part and embeds nothing twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cliplab.data.sources import SourceSpec
from cliplab.data.stream import RawSample
from cliplab.encode import (
    model_device,
    model_dtype,
    model_fingerprint,
)
from cliplab.fileio import atomic_write, write_json
from cliplab.progress import Progress
from cliplab.search import sync
from cliplab.search.batches import Batch, decode_batch, encode_batch, records
from cliplab.search.collection import FORMAT, VERSION, Collection, _pyarrow, meta_schema

__all__ = ["EmbedResult", "embed"]

DTYPES = {"float16": np.float16, "float32": np.float32}


class _DecodedBatches(IterableDataset):
    """Batches of decoded items in source order: worker ``w`` of ``W`` decodes batches
    ``w, w + W, ...``, and the loader takes one from each worker in turn."""

    def __init__(
        self,
        spec: SourceSpec,
        preprocess: Callable[[Any], torch.Tensor],
        start: int,
        batch_size: int,
        captions: bool,
    ) -> None:
        self.spec = spec
        self.preprocess = preprocess
        self.start = start
        self.batch_size = batch_size
        self.captions = captions

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        size = self.batch_size

        def mine(position: int) -> bool:
            return (position // size) % workers == worker

        batch: list[tuple[RawSample, str | None]] = []
        for record, path in records(self.spec.open(), self.start, mine):
            batch.append((record, path))
            if len(batch) == size:
                yield decode_batch(batch, self.preprocess, self.captions)
                batch = []
        if batch:
            yield decode_batch(batch, self.preprocess, self.captions)


@dataclass
class EmbedResult:
    """What a run did: images embedded now and in all, failures, speed."""

    out: Path
    embedded: int = 0  # this run
    total: int = 0  # in the collection
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    resumed_from: int = 0  # records already done when the run started
    sync: dict[str, int] | None = None  # a sync's counts: added, changed, removed, ...
    hashes: dict[str, str] = field(default_factory=dict)  # key -> SHA-256 of what was read

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Run:
    """How a run reads and writes, the same for a full embedding and a sync's delta."""

    batch_size: int
    workers: int
    part_size: int
    progress: bool
    engine: str
    address: str | None


def _check_existing(out: Path, info: dict[str, Any]) -> None:
    """An existing collection may be resumed only with the same model, source and dtype."""
    try:
        old = json.loads((out / "embed.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    old.setdefault("runtime", "torch")  # written before runtimes existed
    for key in ("fingerprint", "runtime", "source", "dtype", "captions", "image_size"):
        if old.get(key) != info.get(key):
            raise ValueError(
                f"{out} holds embeddings made with a different {key} ({old.get(key)!r}, not "
                f"{info.get(key)!r}); use another --out to start a new collection"
            )


class _PartWriter:
    def __init__(self, out: Path, number: int, dtype: str, captions: bool, dim: int) -> None:
        self.out = out
        self.number = number
        self.dtype = dtype
        self.captions = captions
        self.dim = dim
        self.reset()

    def reset(self) -> None:
        self.records = 0
        self.images: list[np.ndarray] = []
        self.texts: list[np.ndarray] = []
        self.meta: list[dict[str, Any]] = []
        self.failures: Counter[str] = Counter()
        self.failed: list[dict[str, str]] = []

    def flush(self, first_id: int) -> int:
        """Write the part (files first, its record last); returns its image count."""
        pa = _pyarrow()
        stem = f"{self.number:06d}"
        n = sum(len(x) for x in self.images)
        images = np.concatenate(self.images) if n else np.zeros((0, self.dim))
        atomic_write(
            self.out / "images" / f"{stem}.npy",
            lambda tmp: np.save(tmp.open("wb"), images.astype(DTYPES[self.dtype])),
        )
        if self.captions:
            texts = np.concatenate(self.texts) if n else np.zeros((0, self.dim))
            atomic_write(
                self.out / "texts" / f"{stem}.npy",
                lambda tmp: np.save(tmp.open("wb"), texts.astype(DTYPES[self.dtype])),
            )
        for i, row in enumerate(self.meta):
            row["id"] = first_id + i
        table = pa.Table.from_pylist(self.meta, schema=meta_schema())
        atomic_write(
            self.out / "meta" / f"{stem}.parquet",
            lambda tmp: pa.parquet.write_table(table, str(tmp)),
        )
        if self.failed:
            with open(self.out / "failures.jsonl", "a", encoding="utf-8") as f:
                for line in self.failed:
                    f.write(json.dumps({"part": self.number, **line}, ensure_ascii=False) + "\n")
        write_json(
            self.out / "parts" / f"{stem}.json",
            {"records": self.records, "images": n, "failures": dict(self.failures)},
        )
        self.number += 1
        self.reset()
        return n


@torch.no_grad()
def embed(
    spec: SourceSpec,
    out: str | os.PathLike[str],
    model: torch.nn.Module,
    preprocess: Callable[[Any], torch.Tensor],
    *,
    model_spec: str,
    model_settings: dict[str, Any] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    dtype: str = "float16",
    captions: bool = True,
    part_size: int = 10_000,
    progress: bool = True,
    log: Callable[[str], None] = print,
    engine: str = "local",
    address: str | None = None,
) -> EmbedResult:
    """Embed the source into the collection ``out`` (created, or resumed; see the module
    docstring). ``model_spec`` and ``model_settings`` are what ``cliplab.load`` takes to
    load the model again at query time; its fingerprint is checked then.

    ``engine="ray"`` runs the same job on Ray Data (:mod:`cliplab.search.ray_embed`): decode
    tasks feeding model actors (one per GPU where the cluster has GPUs), the outputs written
    here in order, the same as this process would write; ``address`` names a cluster and
    ``workers`` caps the decode tasks."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if part_size < 1 or batch_size < 1:
        raise ValueError(
            f"part_size and batch_size must be positive, got {part_size}, {batch_size}"
        )
    out = Path(out)
    model.eval()
    device = model_device(model)
    probe = model.encode_image(
        preprocess(_blank(getattr(model, "image_size", 224)))[None].to(device, model_dtype(model))
    )
    info = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_spec,
        "model_settings": dict(model_settings or {}),
        "fingerprint": model_fingerprint(model),
        "runtime": getattr(model, "runtime", "torch"),  # cliplab.runtime: bf16, onnx-int8...
        "dim": int(probe.shape[-1]),
        "dtype": dtype,
        "normalized": True,
        "image_size": int(getattr(model, "image_size", 0)),
        "source": spec.to_dict(),
        "captions": captions,
    }
    run = _Run(batch_size, workers, part_size, progress, engine, address)
    previous = _read_info(out)
    if previous.get("complete") and _syncable(spec):
        _check_existing(out, info)
        return _sync(spec, out, model, preprocess, info, run, log)
    _check_existing(out, info)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "embed.json", {**info, "complete": False})
    done = Collection(out)
    result = EmbedResult(out, resumed_from=done.records)
    if done.records:
        log(
            f"resuming after {done.records} records ({len(done)} images in {len(done.parts)} parts)"
        )
    _encode_parts(
        spec, out, model, preprocess, info, result, run,
        start_record=done.records, first_part=len(done.parts), first_id=len(done),
    )  # fmt: skip
    final = Collection(out)
    result.total = len(final)
    _write_complete(out, info, final)
    if _syncable(spec):  # the first snapshot: a re-run brings the collection in step
        embedded = dict(zip(final.metadata.column("key").to_pylist(),
                            final.metadata.column("id").to_pylist()))  # fmt: skip
        ids = {**_failed_keys(out), **embedded}
        sync.commit(final, spec.root, None, len(final.parts), ids, result.hashes)
    return result


def _read_info(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "embed.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_complete(out: Path, info: dict[str, Any], final: Collection) -> None:
    write_json(
        out / "embed.json",
        {**info, "complete": True, "count": len(final), "records": final.records,
         "failures": dict(final.failures())},
    )  # fmt: skip


def _syncable(spec: SourceSpec) -> bool:
    """A local folder source: its collection can be kept in step (:mod:`cliplab.search.sync`)."""
    from cliplab.data.sources import FolderSpec
    from cliplab.data.storage import is_remote

    return isinstance(spec, FolderSpec) and not spec.only and not is_remote(spec.root)


def _failed_keys(out: Path) -> dict[str, int]:
    """Keys of records that failed (id -1 in the file list: not retried until they change)."""
    failed: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (out / "failures.jsonl").read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                failed[json.loads(line)["key"]] = -1
    return failed


def _encode_parts(
    spec: SourceSpec,
    out: Path,
    model: torch.nn.Module,
    preprocess: Callable[[Any], torch.Tensor],
    info: dict[str, Any],
    result: EmbedResult,
    run: _Run,
    *,
    start_record: int,
    first_part: int,
    first_id: int,
) -> int:
    """Embed ``spec``'s records from ``start_record`` into parts numbered from ``first_part``
    with ids from ``first_id``; returns the number of the next part."""
    captions = info["captions"]
    writer = _PartWriter(out, first_part, info["dtype"], captions, info["dim"])
    next_id = first_id
    total = _count(spec)
    start = time.perf_counter()
    meter = Progress(
        None if total is None else total - start_record,
        desc="embedding",
        unit="img",
        enabled=run.progress,
    )
    if run.engine == "ray":
        from cliplab.search import ray_embed

        encoded = ray_embed.encoded_batches(
            spec,
            preprocess,
            model,
            start_record,
            run.batch_size,
            captions,
            info["dim"],
            run.address,
            run.workers,
        )
    elif run.engine == "local":
        dataset = _DecodedBatches(spec, preprocess, start_record, run.batch_size, captions)
        loader = DataLoader(dataset, batch_size=None, num_workers=run.workers, collate_fn=_as_is)
        encoded = (encode_batch(model, batch, captions, info["dim"]) for batch in loader)
    else:
        raise ValueError(f"engine must be 'local' or 'ray', got {run.engine!r}")
    for items, image_features, text_features in encoded:
        meter.update(len(items))
        result.hashes.update((it.key, it.sha256) for it in items if it.sha256)
        good = [it for it in items if it.reason is None]
        for it in items:
            if it.reason is not None:
                writer.failures[it.reason] += 1
                result.failures[it.reason] += 1
                writer.failed.append({"key": it.key, "path": it.path or "", "reason": it.reason})
        if image_features is not None:
            writer.images.append(image_features)
            if captions:
                writer.texts.append(text_features)
            writer.meta += [
                {
                    "key": it.key,
                    "path": it.path,
                    "caption": it.caption,
                    "width": it.width,
                    "height": it.height,
                    **(it.photo or {}),
                    "bytes": it.bytes or None,
                    "mtime": it.mtime,
                }
                for it in good
            ]
            result.embedded += len(good)
        writer.records += len(items)
        if writer.records >= run.part_size:
            next_id += writer.flush(next_id)
    if writer.records:
        next_id += writer.flush(next_id)
    meter.close()
    result.seconds += time.perf_counter() - start
    return writer.number


def _grow_index(pending: Collection, rows: int) -> None:
    """Add a sync's new rows to the index; an index a killed sync left ahead of the snapshot
    (rows of parts never committed) is rebuilt instead, since its extra rows are stale."""
    from cliplab.search.index import _read_info, add_new, build_index

    info = _read_info(pending.path / "index")
    if int(info.get("rows", info.get("ntotal", -1))) == rows:
        add_new(pending)
    else:
        build_index(pending, kind=info["plan"]["kind"])


def _sync(
    spec: Any,
    out: Path,
    model: torch.nn.Module,
    preprocess: Callable[[Any], torch.Tensor],
    info: dict[str, Any],
    run: _Run,
    log: Callable[[str], None],
) -> EmbedResult:
    """Bring a complete folder collection in step with its folder (:mod:`cliplab.search.sync`)."""
    start = time.perf_counter()
    old = Collection(out)
    todo = sync.plan(old, spec.root, spec.extensions)
    result = EmbedResult(out, resumed_from=old.records)
    result.sync = todo.summary()
    parts = len(old.parts)
    if todo.embed:
        delta = dataclasses.replace(spec, only=tuple(todo.embed))
        parts = _encode_parts(
            delta, out, model, preprocess, info, result, run,
            start_record=0, first_part=parts, first_id=len(old),
        )  # fmt: skip
    new_ids: dict[str, int] = {}
    if parts > len(old.parts):
        pending = Collection(out, state={**(old.state or {}), "parts": parts})
        new_rows = pending.metadata.slice(len(old))
        new_ids = dict(zip(new_rows.column("key").to_pylist(), new_rows.column("id").to_pylist()))
        if (out / "index" / "info.json").is_file():
            _grow_index(pending, len(old))  # new rows in the index before the state names them
    if todo.embed or todo.removed or todo.touched or old.state is None:
        state = sync.commit(old, spec.root, todo, parts, new_ids, result.hashes)
    else:
        state = old.state
    final = Collection(out)
    gone = np.setdiff1d(final.deleted, old.deleted)
    if len(gone) and (out / "index" / "info.json").is_file():
        from cliplab.search.index import shrink

        log(f"index: {len(gone)} deleted images {shrink(final, gone.tolist())}")
    result.total = final.live
    _write_complete(out, info, final)
    result.seconds = time.perf_counter() - start
    counts = todo.summary()
    log(
        f"sync: {counts['added']} added, {counts['changed']} changed, {counts['removed']} "
        f"removed, {counts['unchanged'] + counts['touched']} unchanged "
        f"({counts['touched']} touched, same content); generation {state['generation']}, "
        f"{final.live} images ({time.perf_counter() - start:.1f} s)"
    )
    return result


def _as_is(batch: Batch) -> Batch:
    return batch


def _count(spec: SourceSpec) -> int | None:
    try:
        return int(spec.open().num_samples())
    except (ValueError, OSError):
        return None


def _blank(size: int) -> Any:
    from PIL import Image

    return Image.new("RGB", (size, size), (255, 255, 255))
