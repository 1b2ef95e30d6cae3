"""FAISS indexes over a collection's image embeddings (``cliplab index``).

The kind is chosen from the vector count and a memory budget, as autofaiss does:

- up to ``exact_below`` vectors (default 50,000): exact inner product (``Flat``), cheap
  enough to search exhaustively and never approximate;
- above it, ``HNSW32`` (a graph over the full vectors: the best recall per millisecond)
  when its memory, about ``n * (4 d + 8 * 32)`` bytes, fits the budget;
- else ``HNSW32,SQ8``: the same graph over vectors stored in one byte per dimension
  (about ``n * (d + 8 * 32)`` bytes; recall stays close to the full vectors');
- otherwise ``IVF{lists},PQ{m}``: vectors compressed to ``m`` bytes each, the number of
  lists about ``4 sqrt(n)`` (at least 39 vectors each), ``m`` the largest that fits the
  budget, up to one byte per 4 dimensions.

An index holds the collection's live images under their ids (FAISS ``IDMap2``): images a
sync deleted are removed from it at once where the index kind can remove (exact and
IVF-PQ: ``remove_ids``); an HNSW graph cannot, so its deleted images stay as tombstones the
searcher skips until they pass :data:`REBUILD_SHARE` of the index, when a sync rebuilds it
from the live images (:func:`shrink`). ``info.json``'s ``rows`` is how many of the
collection's rows the index has seen (ids below it are in it unless deleted).

Embeddings are unit vectors, so inner product is cosine similarity. After a build the recall
at 10 against exact search is measured on a sample of queries: the collection's own image
embeddings and, when captions were embedded, its caption embeddings (text queries are what
quantisation hurts most). ``index/info.json`` records the kind, sizes, timings and recalls.
An index grows with the collection (``add_new``); two collections of one model merge.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cliplab.fileio import atomic_write, write_json
from cliplab.search.collection import Collection, _pyarrow

__all__ = [
    "IndexPlan",
    "SearchIndex",
    "add_new",
    "build_index",
    "merge_collections",
    "plan_index",
    "recall_at_k",
    "shrink",
]

HNSW_M = 32
#: The share of an HNSW index's entries that may be deleted images before a sync rebuilds it.
REBUILD_SHARE = 0.1


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("indexes need faiss-cpu: pip install 'cliplab[search]'") from e
    return faiss


@dataclass(frozen=True)
class IndexPlan:
    """Which index: its FAISS factory string and search-time parameters."""

    kind: str  # "exact", "hnsw" or "ivf-pq"
    factory: str
    nprobe: int = 0
    ef_search: int = 0
    bytes_estimate: int = 0


def _ivf_pq(n: int, dim: int, memory_budget: int) -> IndexPlan:
    # about 4 sqrt(n) lists, with at least 39 training vectors per list (FAISS's minimum)
    lists = max(
        1, min(2 ** round(math.log2(4 * math.sqrt(n))), 2 ** int(math.log2(max(1, n // 39))))
    )
    for m in sorted((d for d in range(1, min(dim // 4, 64) + 1) if dim % d == 0), reverse=True):
        size = n * (m + 8) + lists * dim * 4
        if size <= memory_budget:
            return IndexPlan(
                "ivf-pq", f"IVF{lists},PQ{m}", nprobe=min(lists, 32), bytes_estimate=size
            )
    raise ValueError(
        f"{n} vectors of {dim} dimensions do not fit in {memory_budget} bytes even at 1 byte each"
    )


def plan_index(
    n: int,
    dim: int,
    memory_budget: int | None = None,
    exact_below: int = 50_000,
    kind: str | None = None,
) -> IndexPlan:
    """The index for ``n`` vectors of ``dim`` within ``memory_budget`` bytes (None: any);
    ``kind`` (``exact``, ``hnsw``, ``ivf-pq``) overrides the choice."""
    flat, hnsw = n * dim * 4, n * (dim * 4 + 8 * HNSW_M)
    hnsw_sq8 = n * (dim + 8 * HNSW_M)
    if kind is None:
        kind = "exact" if n <= exact_below else "hnsw"
        if kind == "hnsw" and memory_budget is not None and hnsw > memory_budget:
            kind = "hnsw-sq8" if hnsw_sq8 <= memory_budget else "ivf-pq"
    if kind == "exact":
        return IndexPlan("exact", "Flat", bytes_estimate=flat)
    if kind == "hnsw":
        return IndexPlan("hnsw", f"HNSW{HNSW_M},Flat", ef_search=128, bytes_estimate=hnsw)
    if kind == "hnsw-sq8":
        return IndexPlan("hnsw-sq8", f"HNSW{HNSW_M},SQ8", ef_search=128, bytes_estimate=hnsw_sq8)
    if kind == "ivf-pq":
        return _ivf_pq(
            n,
            dim,
            memory_budget if memory_budget is not None else n * (dim // 4 + 8) + 4096 * dim * 4,
        )
    raise ValueError(f"index kind must be exact, hnsw, hnsw-sq8 or ivf-pq, got {kind!r}")


def _make(plan: IndexPlan, dim: int, vectors: np.ndarray, seed: int = 0) -> Any:
    faiss = _faiss()
    index = faiss.index_factory(dim, f"IDMap2,{plan.factory}", faiss.METRIC_INNER_PRODUCT)
    concrete = _inner(index)
    if hasattr(concrete, "do_polysemous_training"):  # an IVF-PQ: only its codes are needed
        concrete.do_polysemous_training = False  # (20x slower training, unused at search)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        head = plan.factory.split(",")[0]
        lists = int(head[3:]) if head.startswith("IVF") else 256
        take = min(len(vectors), max(256 * 40, 40 * lists))
        sample = vectors[rng.choice(len(vectors), take, replace=False)]
        index.train(sample)
    _set_params(index, plan)
    return index


def _inner(index: Any) -> Any:
    """The index an ``IDMap2`` wraps (or the index itself: one built before ids), concrete."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else index


def _set_params(index: Any, plan: IndexPlan) -> None:
    faiss = _faiss()
    inner = _inner(index)
    if plan.nprobe:
        faiss.extract_index_ivf(inner).nprobe = plan.nprobe
    if plan.ef_search:
        inner.hnsw.efSearch = plan.ef_search


def recall_at_k(
    index: Any,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    ids: np.ndarray | None = None,
) -> float:
    """Mean share of the exact top-``k`` (by inner product) that ``index`` returns
    (``ids``: the index's id of each row of ``vectors``; default their positions)."""
    if len(queries) == 0:
        return float("nan")
    faiss = _faiss()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    k = min(k, len(vectors))
    _, truth = exact.search(queries, k)
    if ids is not None:
        truth = ids[truth]
    _, found = index.search(queries, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist()))
    return hits / (k * len(queries))


class SearchIndex:
    """A collection's index, loaded: ``search(queries, k) -> (scores, ids)``."""

    def __init__(self, collection: Collection) -> None:
        faiss = _faiss()
        path = collection.path / "index"
        self.info = _read_info(path)
        if self.info["fingerprint"] != collection.fingerprint:
            raise ValueError(f"{path} was built for another model than {collection.path}")
        self.index = faiss.read_index(str(path / "images.faiss"))
        _set_params(self.index, IndexPlan(**self.info["plan"]))

    @property
    def ntotal(self) -> int:
        """Entries in the index (deleted images removed from it no longer count)."""
        return int(self.index.ntotal)

    @property
    def rows(self) -> int:
        """How many of the collection's rows the index has seen (ids below it are in it
        unless deleted)."""
        return int(self.info.get("rows", self.info.get("ntotal", self.ntotal)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _read_info(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((path / "info.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no index in {path.parent}: run `cliplab index {path.parent}`"
        ) from None


def _queries(
    collection: Collection, vectors: np.ndarray, count: int, seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), min(count, len(vectors)), replace=False)
    queries = {"image": vectors[picks]}
    if collection.has_texts:
        texts = collection.text_embeddings()
        texts = texts[np.linalg.norm(texts, axis=1) > 0]
        if len(texts):
            queries["text"] = texts[rng.choice(len(texts), min(count, len(texts)), replace=False)]
    return queries


def _save(
    collection: Collection, index: Any, plan: IndexPlan, extra: dict[str, Any]
) -> dict[str, Any]:
    faiss = _faiss()
    path = collection.path / "index"
    path.mkdir(exist_ok=True)
    atomic_write(path / "images.faiss", lambda tmp: faiss.write_index(index, str(tmp)))
    info = {
        "fingerprint": collection.fingerprint,
        "plan": asdict(plan),
        "ntotal": int(index.ntotal),
        "bytes": (path / "images.faiss").stat().st_size,
        **extra,
    }
    write_json(path / "info.json", info)
    return info


def build_index(
    collection: Collection,
    *,
    memory_budget: int | None = None,
    exact_below: int = 50_000,
    kind: str | None = None,
    recall_queries: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Build (or rebuild) the collection's index over its live images; returns
    ``index/info.json``'s contents."""
    alive = collection.alive()
    ids = np.flatnonzero(alive).astype(np.int64)
    vectors = np.ascontiguousarray(collection.image_embeddings()[alive])
    if len(vectors) == 0:
        raise ValueError(f"{collection.path} holds no embeddings")
    plan = plan_index(len(vectors), vectors.shape[1], memory_budget, exact_below, kind)
    start = time.perf_counter()
    index = _make(plan, vectors.shape[1], vectors, seed)
    index.add_with_ids(vectors, ids)
    seconds = time.perf_counter() - start
    recalls = {
        f"recall@10 ({name} queries)": recall_at_k(index, vectors, q, ids=ids)
        for name, q in _queries(collection, vectors, recall_queries, seed).items()
    }
    extra = {"build_seconds": round(seconds, 3), "rows": len(alive), "deleted": 0, **recalls}
    return _save(collection, index, plan, extra)


def add_new(collection: Collection) -> dict[str, Any]:
    """Add the embeddings the index does not hold yet (a collection that grew)."""
    faiss = _faiss()
    path = collection.path / "index"
    info = _read_info(path)
    if info["fingerprint"] != collection.fingerprint:
        raise ValueError(f"{path} was built for another model; rebuild it")
    index = faiss.read_index(str(path / "images.faiss"))
    start = int(info.get("rows", index.ntotal))
    new = np.ascontiguousarray(collection.image_embeddings(start=start))
    if len(new):
        if hasattr(faiss.downcast_index(index), "id_map"):
            index.add_with_ids(new, np.arange(start, start + len(new), dtype=np.int64))
        else:  # an index from before ids: positions are ids
            index.add(new)
    info = {k: v for k, v in info.items() if k not in ("ntotal", "bytes")}
    info["added"] = int(len(new))
    info["rows"] = start + len(new)
    return _save(
        collection,
        index,
        IndexPlan(**info.pop("plan")),
        {k: v for k, v in info.items() if k != "fingerprint"},
    )


def shrink(collection: Collection, removed: Sequence[int]) -> str:
    """Take images a sync deleted (ids ``removed``) out of the index: removed at once where
    the index kind can (``"removed"``), else left as tombstones (``"kept"``) until they pass
    :data:`REBUILD_SHARE` of its entries, when it is rebuilt from the live images
    (``"rebuilt"``). The collection's state must already name them deleted."""
    faiss = _faiss()
    path = collection.path / "index"
    info = _read_info(path)
    index = faiss.read_index(str(path / "images.faiss"))
    wrapped = hasattr(faiss.downcast_index(index), "id_map")
    gone = np.asarray(sorted(set(int(i) for i in removed)), dtype=np.int64)
    if wrapped and not hasattr(_inner(index), "hnsw"):
        if len(gone):
            index.remove_ids(faiss.IDSelectorBatch(gone))
        keep = {
            k: v for k, v in info.items() if k not in ("ntotal", "bytes", "plan", "fingerprint")
        }
        _save(collection, index, IndexPlan(**info["plan"]), {**keep, "removed": int(len(gone))})
        return "removed"
    deleted = int(info.get("deleted", 0)) + len(gone)
    if not wrapped or deleted > REBUILD_SHARE * max(1, int(index.ntotal)):
        build_index(collection, kind=info["plan"]["kind"])
        return "rebuilt"
    write_json(path / "info.json", {**info, "deleted": deleted})
    return "kept"


def merge_collections(collections: Sequence[Collection], out: str | os.PathLike[str]) -> Collection:
    """A new collection ``out`` holding ``collections`` one after the other (all of the same
    model): parts are copied and renumbered, ids follow. Build its index afterwards."""
    first = collections[0]
    for other in collections[1:]:
        if other.fingerprint != first.fingerprint:
            raise ValueError(
                f"{first.path} and {other.path} were embedded with different models "
                f"({first.fingerprint[:12]} vs {other.fingerprint[:12]}): they cannot share an index"
            )
        if other.info.get("dtype") != first.info.get("dtype"):
            raise ValueError(f"{first.path} and {other.path} store different dtypes")
    pa = _pyarrow()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty")
    captions = all(c.has_texts for c in collections)
    number, next_id = 0, 0
    for source in collections:
        for part in source.parts:
            stem, new = part.stem, f"{number:06d}"
            for kind in ("images", "texts") if captions else ("images",):
                (out / kind).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.path / kind / f"{stem}.npy", out / kind / f"{new}.npy")
            table = pa.parquet.read_table(source.path / "meta" / f"{stem}.parquet")
            ids = pa.array(range(next_id, next_id + table.num_rows), type=pa.int64())
            table = table.set_column(table.schema.get_field_index("id"), "id", ids)
            (out / "meta").mkdir(parents=True, exist_ok=True)
            atomic_write(
                out / "meta" / f"{new}.parquet",
                lambda tmp, t=table: pa.parquet.write_table(t, str(tmp)),
            )
            write_json(
                out / "parts" / f"{new}.json",
                {"records": part.records, "images": part.images, "failures": part.failures},
            )
            number += 1
            next_id += table.num_rows
    info = {k: v for k, v in first.info.items() if k != "source"}
    info.update(
        sources=[c.info.get("source") for c in collections],
        captions=captions,
        count=next_id,
        merged_from=[str(c.path) for c in collections],
    )
    write_json(out / "embed.json", info)
    return Collection(out)
