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

import os
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

from cliplab.data.curate.balance import balance_reason
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
    """Stage 1: one input file -> its records in chunks, one pickled chunk per row (Ray sees
    a few rows per file, not one per text: the per-row overhead stays out of the way)."""

    def __init__(self, fmt: str, text_column: str | None, id_column: str | None, chunk: int):
        self.options = (fmt, text_column, id_column)
        self.chunk = chunk

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for path in batch["path"]:
            records: list[Record] = []
            for record in read_file_records(str(path), *self.options):
                records.append(record)
                if len(records) >= self.chunk:
                    yield {"chunk": [pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)]}
                    records = []
            if records:
                yield {"chunk": [pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)]}


class _Checker:
    """Stage 2: a chunk of records -> the chunk with each record's (reason, query ids), by the
    recipe's checks (and the balancing draw when counts are given). ``light``: the checks
    only, no records (the counting pass)."""

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
        out = []
        for blob in batch["chunk"]:
            records: list[Record] = pickle.loads(blob)  # noqa: S301 - our reader's output
            results = []
            for record in records:
                reason, found = self.check(record.text)
                if reason is None and self.counts is not None and record.error is None:
                    reason = balance_reason(record.id, found, self.counts, self.t, self.seed)
                if (reason is not None or record.error is not None) and record.members:
                    record.members = None  # a dropped pair's image bytes go no further
                results.append((reason, found))
            payload = results if self.light else (records, results)
            out.append(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        return {"checked": out}


def checked(
    read: tuple[Sequence[str], str, str | None, str | None],
    queries: list[str],
    english: EnglishFilter | None,
    config: Any,  # CurateConfig
    counts: list[int] | None = None,
    light: bool = False,
) -> Iterator[tuple[Record | None, tuple[str | None, list[int]]]]:
    """Every input record in input order with its check, computed on the Ray cluster
    (``config.limit``: the first that many). ``light``: records are not shipped back (None),
    only the checks (the counting pass)."""
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
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus),
    )
    remaining = config.limit if config.limit is not None else -1
    for row in ds.iter_rows():
        payload = pickle.loads(row["checked"])  # noqa: S301 - our checker's output
        records, results = (None, payload) if light else payload
        for i, result in enumerate(results):
            if remaining == 0:
                return
            remaining -= 1
            yield (None if records is None else records[i]), result
