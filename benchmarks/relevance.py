"""How ``--min-relevance`` behaves on a labelled set: precision of the results and how many
come back, against the threshold, for one query per class (the set's first template).

The set's images are embedded into a collection (``cliplab embed``'s code), the relevance
calibration is measured from the null queries (:mod:`cliplab.search.relevance`; the demo's
models have a SigLIP bias, whose own sigmoid ``auto`` would use: ``relevance="null"`` here
compares the two models on the same footing), and every
query returns all hits at or above each threshold; a hit is correct when its image has the
query's class. Models: the demo's emoji model (zero-shot) and its Fashion-MNIST fine-tune.

    python benchmarks/relevance.py --set data/eval/fashion-mnist-test \
        --model demo=runs/demo/train/model --model fine-tuned=runs/demo/finetune/FLYP-seed0/model

Writes ``benchmarks/results/relevance-SET.json`` and ``docs/results/relevance-SET.png``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, machine, table, write

import cliplab  # noqa: E402
from cliplab.data.evalsets import load_classification  # noqa: E402
from cliplab.data.sources import spec_for_path  # noqa: E402
from cliplab.search.embed import embed  # noqa: E402
from cliplab.search.query import Searcher  # noqa: E402

THRESHOLDS = [round(t, 2) for t in np.linspace(0, 1, 21)] + [0.99, 0.999]


def curve(model_path: str, evalset: Path, work: Path) -> tuple[list[dict[str, Any]], int]:
    model, preprocess = cliplab.load(model_path)
    data = load_classification(evalset)
    out = work / str(abs(hash(model_path)))
    embed(spec_for_path(str(evalset / "images")), out, model, preprocess,
          model_spec=str(model_path), progress=False, captions=False, log=lambda m: None)  # fmt: skip
    searcher = Searcher(out, model, preprocess, use_index=False, relevance="null")
    n = len(searcher.collection)
    label_of = {Path(str(p)).name: y for p, y in zip(data.images, data.labels, strict=True)}
    rows = []
    template = data.templates[0] if data.templates else "a photo of a {}."
    queries = [template.replace("{}", c) for c in data.classnames]
    hits_per_query = [searcher.search_text(q, k=n) for q in queries]
    for t in THRESHOLDS:
        precisions, counts, empty = [], [], 0
        for label, hits in enumerate(hits_per_query):
            kept = [h for h in hits if h.relevance >= t]
            counts.append(len(kept))
            if not kept:
                empty += 1
                continue
            precisions.append(np.mean([label_of[Path(h.key).name] == label for h in kept]))
        rows.append(
            {
                "threshold": t,
                "precision": float(np.mean(precisions)) if precisions else None,
                "hits_per_query": float(np.mean(counts)),
                "queries_without_hits": empty,
            }
        )
    return rows, n


def plot(results: dict[str, list[dict[str, Any]]], path: Path, name: str) -> None:
    from cliplab.evaluation.output import pyplot, save_figure

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(9, 3.6))
    for label, rows in results.items():
        rows = [r for r in rows if r["threshold"] <= 1.0]
        xs = [r["threshold"] for r in rows]
        left.plot(xs, [100 * (r["precision"] or 0) for r in rows], marker="o", ms=3, label=label)
        right.plot(xs, [max(r["hits_per_query"], 0.1) for r in rows], marker="o", ms=3, label=label)
    left.set_xlabel("--min-relevance")
    left.set_ylabel("precision of the results (%)")
    right.set_xlabel("--min-relevance")
    right.set_ylabel("results per query")
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: one query per class, every result at or above the threshold")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", type=Path, required=True, help="a classification set directory")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH")
    args = p.parse_args()
    results, sizes = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for item in args.model:
            label, _, path = item.partition("=")
            results[label], sizes[label] = curve(path, args.set, Path(work))
            print(f"== {label} ({path})")
            print(table(results[label], list(results[label][0])))
    name = args.set.name
    plot(results, ROOT / "docs" / "results" / f"relevance-{name}.png", name)
    payload = {"machine": machine(), "set": name, "models": dict(args.model and
               [m.partition("=")[::2] for m in args.model]), "results": results}  # fmt: skip
    print(f"wrote {write(f'relevance-{name}.json', payload)}")


if __name__ == "__main__":
    main()
