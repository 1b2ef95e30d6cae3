"""The demo's evaluation: its suite of registry protocols on the trained model, on sets never
trained on, and the headline rows of the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cliplab.data.evalsets import ClassificationSet, load_classification, load_retrieval
from cliplab.demo.plan import OPTIONAL_ZEROSHOT_SETS, RETRIEVAL_TESTS, ZEROSHOT_SETS, Log, suite
from cliplab.encode import FeatureStore
from cliplab.evaluation.protocol import Result
from cliplab.evaluation.registry import get


def load_sets(
    data_dir: Path, runs: Sequence[tuple[str, dict[str, Any], Any]]
) -> list[tuple[str, dict[str, Any], Any]]:
    """``runs`` with their set names replaced by the loaded sets of ``data_dir/eval``."""
    cache: dict[str, Any] = {}
    loaders = {"classification": load_classification, "retrieval": load_retrieval}
    loaded = []
    for protocol, inputs, options in runs:
        values = {}
        for i in get(protocol).inputs:
            name = inputs.get(i.name)
            if name is None:
                continue
            names = name if isinstance(name, list) else [name]
            sets = []
            for n in names:
                if n not in cache:
                    cache[n] = loaders[i.kind](data_dir / "eval" / n)
                sets.append(cache[n])
            values[i.name] = sets if i.many else sets[0]
        loaded.append((protocol, values, options))
    return loaded


def evaluate(
    model_dir: Path,
    data_dir: Path,
    log: Log = print,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: int = 3,
    max_iter: int = 100,
    progress: bool = True,
    optional: Sequence[str] = (),
) -> tuple[list[Result], FeatureStore, list[ClassificationSet]]:
    """The suite on ``model_dir`` (with the ``optional`` zero-shot sets that were built):
    (results, the model's feature store, the main zero-shot sets)."""
    import cliplab

    model, preprocess = cliplab.load(model_dir)
    store = FeatureStore(model, preprocess, cache_dir=None, batch_size=256, progress=progress)
    runs = load_sets(data_dir, suite(shots, seeds, max_iter, optional))
    log(f"== evaluation ({len(runs)} runs: " + ", ".join(p for p, _, _ in runs) + ")")
    results = [get(p)(store, options, **inputs) for p, inputs, options in runs]
    zeroshot = [
        inputs["dataset"]
        for p, inputs, _ in runs
        if p == "zeroshot" and inputs["dataset"].name in ZEROSHOT_SETS
    ]
    return results, store, zeroshot


def summary_rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One row per headline figure: set, what it tests, protocol, metric, value, chance."""
    tests = {**ZEROSHOT_SETS, **OPTIONAL_ZEROSHOT_SETS, **RETRIEVAL_TESTS}
    rows = []
    for r in results:
        for row in r.rows():
            test = row.detail
            if row.protocol == "zero-shot" or row.protocol.startswith("retrieval"):
                test = tests.get(row.dataset, test)
            rows.append(
                {
                    "set": row.dataset,
                    "test": test,
                    "protocol": row.protocol,
                    "metric": row.metric,
                    "value": row.value,
                    "chance": row.chance,
                }
            )
    return rows
