"""Curation on Ray Data (``cliplab data curate --engine ray [--address ADDR]``).

The same recipe as the local engine, as two Ray Data stages over the input files:

1. **read** (a task per input file: CSV/TSV/JSONL/Parquet tables or WebDataset shards, local
   or in object storage): the file's records, in order, in chunks of ``chunk_size``;
2. **check** (an actor pool, one query automaton per actor): junk and language filters and
   query matching; with balancing counts given, the keep-or-drop draw too.

Ray's streaming executor keeps memory bounded (a few blocks per operator in flight) and
``preserve_order`` returns the records in input order, so the driver applies the per-query
cap exactly as the local engine does: the kept set is identical for the same input, options
and seed. A rejected record travels without its image bytes. The driver writes the outputs.

On a cluster, give ``--address`` (``ray://HEAD:10001`` or ``auto``); every node needs
cliplab installed and access to the inputs (shared storage or object storage URLs).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

from cliplab.data.curate.filters import EnglishFilter
from cliplab.data.curate.inputs import Record, expand_inputs, read_file_records
from cliplab.data.curate.matching import QueryMatcher, TextChecker

__all__ = ["checked", "start", "stop"]

_STARTED = False


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError("the ray engine needs Ray Data: pip install 'cliplab[ray]'") from e
    return ray


def start(address: str | None, workers: int = 0) -> int:
    """Connect to ``address`` (or start a local cluster with ``workers`` CPUs, default all);
    returns the cluster's CPU count. A cluster already connected in this process is used as
    it is."""
    global _STARTED
    ray = _ray()
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
        _STARTED = True
    return int(ray.cluster_resources().get("CPU", 1))


def stop() -> None:
    """Shut down the local cluster :func:`start` started (not one the caller had started)."""
    global _STARTED
    if _STARTED:
        _ray().shutdown()
        _STARTED = False


class _Reader:
    """Stage 1: one input file -> batches of pickled records, in file order."""

    def __init__(self, fmt: str, text_column: str | None, id_column: str | None, chunk: int):
        self.options = (fmt, text_column, id_column)
        self.chunk = chunk

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for path in batch["path"]:
            records: list[bytes] = []
            for record in read_file_records(str(path), *self.options):
                records.append(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
                if len(records) >= self.chunk:
                    yield {"record": records}
                    records = []
            if records:
                yield {"record": records}


class _Checker:
    """Stage 2: records -> (reason, query ids) with the recipe's checks (and the balancing
    draw when counts are given). ``light``: return only the check, not the record."""

    def __init__(
        self,
        queries: list[str],
        english: EnglishFilter | None,
        counts: list[int] | None,
        t: int,
        seed: int,
        light: bool,
    ) -> None:
        self.check = TextChecker(QueryMatcher(queries), english)
        self.counts, self.t, self.seed, self.light = counts, t, seed, light

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from cliplab.data.curate.pipeline import balance_reason

        reasons: list[str | None] = []
        found_out: list[str] = []
        out: list[bytes] = []
        for blob in batch["record"]:
            record: Record = pickle.loads(blob)  # noqa: S301 - our own reader stage's output
            reason, found = self.check(record.text)
            if reason is None and self.counts is not None and record.error is None:
                reason = balance_reason(record.id, found, self.counts, self.t, self.seed)
            reasons.append(reason)
            found_out.append(json.dumps(found))
            if not self.light:
                if (reason is not None or record.error is not None) and record.members:
                    record.members = None  # a dropped pair's image bytes go no further
                    blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
                out.append(blob)
        result: dict[str, Any] = {"reason": reasons, "found": found_out}
        if not self.light:
            result["record"] = out
        return result


def checked(
    read: tuple[Sequence[str], str, str | None, str | None],
    queries: list[str],
    english: EnglishFilter | None,
    config: Any,  # CurateConfig
    counts: list[int] | None = None,
    light: bool = False,
) -> Iterator[tuple[Record | None, tuple[str | None, list[int]]]]:
    """Every input record in input order with its check, computed on the Ray cluster.
    ``light``: records are not shipped back (None), only the checks (the counting pass)."""
    ray = _ray()
    inputs, fmt, text_column, id_column = read
    files = expand_inputs(inputs)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files))
    ds = ds.map_batches(
        _Reader,
        fn_constructor_kwargs={
            "fmt": fmt,
            "text_column": text_column,
            "id_column": id_column,
            "chunk": config.chunk_size,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus),
    )
    if config.limit is not None:
        ds = ds.limit(config.limit)
    ds = ds.map_batches(
        _Checker,
        fn_constructor_kwargs={
            "queries": queries,
            "english": english,
            "counts": counts,
            "t": config.cap,
            "seed": config.seed,
            "light": light,
        },
        batch_size=config.chunk_size,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus),
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        blobs = batch.get("record")
        for i, (reason, found) in enumerate(zip(batch["reason"], batch["found"])):
            record = None if light else pickle.loads(blobs[i])  # noqa: S301
            yield record, (None if reason is None else str(reason), json.loads(found))
