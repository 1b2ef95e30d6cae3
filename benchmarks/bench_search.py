"""Index build time and memory, query latency and recall@10 at 10k, 100k and 1M vectors.

Vectors are synthetic (clustered unit vectors of ViT-B/32's 512 dimensions: no embedded
collection of a million images exists here), indexed as ``cliplab index`` would with the
given memory budget; recall@10 is against exact search on 500 held-out queries near the
data (a stored vector plus noise: as a text query lands near, not on, its images).

    python benchmarks/bench_search.py --sizes 10000 100000 1000000 \
        --memory-budget 8G --memory-budget 1G --memory-budget 200M

Writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cliplab.cli.search import parse_size  # noqa: E402
from cliplab.search.index import _make, plan_index, recall_at_k  # noqa: E402


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: bounded temporary memory
        m = min(100_000, n - start)
        out[start : start + m] = centres[rng.integers(0, 1000, m)] + 0.7 * rng.normal(size=(m, dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument(
        "--memory-budget",
        type=parse_size,
        action="append",
        help="bytes for the index (repeatable: each size is indexed under each budget; "
        "default: no limit)",
    )
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search.json"))
    a = p.parse_args()
    rows = []
    budgets = a.memory_budget or [None]
    for n in a.sizes:
        x = vectors(n, a.dim)
        rng = np.random.default_rng(1)
        q = x[rng.choice(n, a.queries, replace=False)] + 0.05 * rng.normal(size=(a.queries, a.dim))
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        plans = {}
        for budget in budgets:
            plan = plan_index(n, a.dim, budget)
            plans.setdefault(plan.factory, (plan, budget))
        for plan, budget in plans.values():
            rows.append(measure(x, q, plan, budget, a.dim))
            print(json.dumps(rows[-1]))
        del x
    report = {
        "command": " ".join(["python benchmarks/bench_search.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "faiss": __import__("faiss").__version__,
        "data": "synthetic: 1000 clusters, unit vectors, noise 0.7 per dimension; queries: "
        "a stored vector plus noise 0.05, renormalised",
        "rows": rows,
    }
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


def measure(x: np.ndarray, q: np.ndarray, plan: object, budget: int | None, dim: int) -> dict:
    """Build the planned index on ``x``; its size, build time, latency and recall."""
    import faiss

    n = len(x)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    index = _make(plan, dim, x)
    index.add(x)
    build = time.perf_counter() - start
    size = len(faiss.serialize_index(index))
    latencies = []
    for row in q:
        t = time.perf_counter()
        index.search(row[None], 10)
        latencies.append(1000 * (time.perf_counter() - t))
    recall = recall_at_k(index, x, q, 10)
    wide = {}
    if plan.kind != "exact":  # the same index searched 4x wider: recall for latency
        if hasattr(index, "hnsw"):
            index.hnsw.efSearch = 4 * plan.ef_search
        else:
            faiss.extract_index_ivf(index).nprobe = 4 * plan.nprobe
        t = time.perf_counter()
        for row in q:
            index.search(row[None], 10)
        wide = {
            "wide_search": f"efSearch {4 * plan.ef_search}"
            if hasattr(index, "hnsw")
            else f"nprobe {4 * plan.nprobe}",
            "wide_latency_ms_mean": round(1000 * (time.perf_counter() - t) / len(q), 3),
            "wide_recall@10": round(recall_at_k(index, x, q, 10), 4),
        }
    return {
        "vectors": n,
        "dim": dim,
        "memory_budget": budget,
        "kind": plan.kind,
        "factory": plan.factory,
        "build_s": round(build, 2),
        "index_mib": round(size / 2**20, 1),
        "peak_rss_growth_mib": round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1
        ),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 3),
        "recall@10": round(recall, 4),
        **wide,
    }


if __name__ == "__main__":
    main()
