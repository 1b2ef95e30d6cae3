"""Exact and near-duplicate images of an embedded collection (``cliplab dedup``).

- **Exact duplicates**: live images with the same bytes (SHA-256). A folder collection kept
  in step has each file's hash in its file list (:func:`cliplab.search.sync.file_list`);
  other images are read (:meth:`Collection.image_bytes`) and hashed; unreadable ones are
  counted and left out of this step. Only live ids count: tombstones never appear.
- **Near duplicates**: one photo re-encoded, resized, cropped or lightly edited. Each exact
  group takes part by its first id alone, so the k-nearest-neighbour search (FAISS exact
  inner product over the live vectors, queried in blocks) sees no copy pairs; neighbours
  whose cosine similarity is at least ``threshold`` are joined into connected groups
  (union-find).
- **The threshold** is measured on the collection itself, since what "near" means depends
  on the model and on the pictures: up to ``sample`` live images (seeded) are edited with
  PIL (a low-quality JPEG re-encode, a downscale to half and back, a centre crop of 85-90%,
  a small brightness/colour shift, a drawn rectangle over about 4% of the picture) and the
  edits embedded with the collection's model. Positives: cosine(original, edit).
  Negatives: each sampled image's similarity to its nearest other live image (exact copies
  excluded). The threshold is the lowest score whose precision (positives against
  negatives) reaches ``precision`` (default 0.99); when none does, the best F1, and the
  report says so. ``threshold=`` given overrides the choice; its precision and recall are
  still measured and reported.

  A nearest image may itself be a near duplicate already in the collection, which would
  count a true pair as a false positive and push the threshold up. So a neighbour is
  skipped (and counted), the next nearest being the negative, when it is closer to the
  sampled image than the median of that image's own edits (to this model, an edit of it);
  and, once a first threshold is chosen that way, when that threshold puts the two in one
  group of three or more images and the neighbour is at least as close as the image's
  least similar edit. The threshold is then chosen again (never higher: negatives only
  move down). A lone pair (one copy of a photo) is not re-labelled, since a distinct
  look-alike forms pairs too: such a near duplicate, sampled, only makes the threshold
  stricter.
- **Similar, not duplicates**: pairs from ``similar`` up to the threshold (default: the 90th
  percentile of the negatives, i.e. closer than nine images in ten are to their nearest
  distinct image) are listed apart, best first, capped, so unusually similar pictures (the
  same scene, a burst) are shown without being called duplicates.

The report (:class:`DedupReport`) is written atomically to ``C/dedup.json`` with the
collection's fingerprint and sync generation, so a reader can tell it is stale.

Why one module: the steps share one pass's arrays (the neighbour lists give both the
threshold's negatives and the groups) and feed one report.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cliplab.fileio import write_json
from cliplab.search.collection import Collection
from cliplab.search.sync import file_list

__all__ = [
    "EDITS",
    "REPORT_FILE",
    "DedupReport",
    "ThresholdChoice",
    "choose_threshold",
    "content_hashes",
    "exact_groups",
    "find_duplicates",
    "nearest_neighbours",
    "synthetic_edits",
]

#: The report's file name inside the collection.
REPORT_FILE = "dedup.json"
#: The synthetic edits, in the order :func:`synthetic_edits` makes them.
EDITS = ("jpeg", "half-size", "crop", "colour", "overlay")
#: Query rows per FAISS search call: bounds the (rows, k) results and the scan's memory.
BLOCK = 4096
#: Edits are made on the picture shrunk to at most this many pixels a side (models see less).
EDIT_SIDE = 1024


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and what it does on the labelled scores: precision, recall, F1 and
    whether the precision target was reached (``method``: target-precision, best-f1, given)."""

    threshold: float
    precision: float | None
    recall: float | None
    reached: bool
    method: str


def choose_threshold(
    positives: np.ndarray, negatives: np.ndarray, target: float, given: float | None = None
) -> ThresholdChoice:
    """The lowest score whose precision (positives >= t against negatives >= t) is at least
    ``target``; the best F1 when none is; ``given``: that threshold, measured. Precision
    and recall are None where they cannot be measured (no positives)."""
    pos = np.sort(np.asarray(positives, dtype=np.float64))
    neg = np.sort(np.asarray(negatives, dtype=np.float64))

    def measure(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tp = len(pos) - np.searchsorted(pos, t, side="left")
        fp = len(neg) - np.searchsorted(neg, t, side="left")
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        return precision, tp / max(len(pos), 1), tp

    if given is not None:
        if not len(pos):
            return ThresholdChoice(float(given), None, None, False, "given")
        p, r, _ = measure(np.array([given]))
        return ThresholdChoice(
            float(given), float(p[0]), float(r[0]), bool(p[0] >= target), "given"
        )
    if not len(pos):
        raise ValueError("none of the sampled images could be read and edited: give a threshold")
    scores = np.unique(np.concatenate([pos, neg]))
    precision, recall, tp = measure(scores)
    ok = (precision >= target) & (tp > 0)
    if ok.any():
        i = int(np.argmax(ok))  # scores ascend: the first is the lowest
        return ThresholdChoice(float(scores[i]), float(precision[i]), float(recall[i]), True,
                               "target-precision")  # fmt: skip
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1))
    return ThresholdChoice(float(scores[i]), float(precision[i]), float(recall[i]), False,
                           "best-f1")  # fmt: skip


# --------------------------------------------------------------------------- exact


def content_hashes(
    collection: Collection, ids: Sequence[int], threads: int = 8
) -> tuple[dict[int, str], int, int]:
    """(id -> SHA-256 of the image's bytes, how many came from the file list, how many were
    unreadable) for ``ids``: the file list's hash where it has one, else the bytes read and
    hashed (in threads: reading is I/O)."""
    known: dict[int, str] = {}
    for entry in (file_list(collection) or {}).values():
        if entry.id >= 0 and entry.sha256:
            known[entry.id] = entry.sha256
    wanted = [int(i) for i in ids]
    hashes = {i: known[i] for i in wanted if i in known}
    from_list = len(hashes)
    missing = [i for i in wanted if i not in hashes]

    def digest(i: int) -> str | None:
        data = collection.image_bytes(i)
        return None if data is None else hashlib.sha256(data).hexdigest()

    unreadable = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for i, sha in zip(missing, pool.map(digest, missing)):
            if sha is None:
                unreadable += 1
            else:
                hashes[i] = sha
    return hashes, from_list, unreadable


def exact_groups(hashes: dict[int, str]) -> list[list[int]]:
    """Ids sharing a hash, two or more a group, each sorted; largest groups first, then by
    first id."""
    by_hash: dict[str, list[int]] = {}
    for i, sha in hashes.items():
        by_hash.setdefault(sha, []).append(i)
    return _sorted_groups(g for g in by_hash.values() if len(g) > 1)


def _sorted_groups(groups: Any) -> list[list[int]]:
    return sorted((sorted(g) for g in groups), key=lambda g: (-len(g), g[0]))


# --------------------------------------------------------------------------- neighbours


def nearest_neighbours(
    vectors: np.ndarray, k: int, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """(sims, rows): each row's ``k`` nearest other rows (at most n - 1), best first, by
    exact inner product (FAISS ``IndexFlatIP``), queried ``block`` rows at a time."""
    from cliplab.search.index import _faiss

    n = len(vectors)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = _faiss().IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims = np.empty((n, k), np.float32)
    rows = np.empty((n, k), np.int64)
    for start in range(0, n, block):
        s, r = index.search(vectors[start : start + block], k + 1)
        self_hit = r == np.arange(start, start + len(r))[:, None]
        # a row whose own hit was pushed out by exact ties drops its last neighbour instead
        self_hit[~self_hit.any(axis=1), -1] = True
        keep = ~self_hit
        sims[start : start + len(r)] = s[keep].reshape(len(r), k)
        rows[start : start + len(r)] = r[keep].reshape(len(r), k)
    return sims, rows


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _group(sims: np.ndarray, rows: np.ndarray, cut: float) -> _UnionFind:
    """The rows joined by every neighbour pair at least ``cut`` similar."""
    groups = _UnionFind(len(sims))
    for a, b in zip(*np.nonzero(sims >= cut)):
        groups.union(int(a), int(rows[a, b]))
    return groups


def _negatives(
    picked: np.ndarray, edits: dict[int, np.ndarray], reps: np.ndarray, sims: np.ndarray,
    rows: np.ndarray, groups: _UnionFind | None,
) -> tuple[np.ndarray, int, int]:  # fmt: skip
    """(each sampled image's similarity to its nearest other image that is not taken as its
    near duplicate, neighbours skipped as closer than the image's median edit, neighbours
    skipped as in one group of three or more with it under ``groups``)."""
    roots = sizes = None
    if groups is not None:
        roots = np.array([groups.find(p) for p in range(len(sims))])
        sizes = np.bincount(roots, minlength=len(sims))
    negatives, closer, grouped = [], 0, 0
    for p in picked:
        own = edits.get(int(reps[p]))
        if own is None:
            continue
        bar, low = float(np.median(own)), float(own.min())
        for score, q in zip(sims[p], rows[p]):
            if score >= bar:
                closer += 1
            elif (
                sizes is not None and score >= low and roots[q] == roots[p] and sizes[roots[p]] > 2
            ):
                grouped += 1
            else:
                negatives.append(float(score))
                break
    return np.asarray(negatives, dtype=np.float32), closer, grouped


# --------------------------------------------------------------------------- edits


def synthetic_edits(image: Any, rng: np.random.Generator) -> list[Any]:
    """The :data:`EDITS` of a PIL RGB picture, in order: a JPEG re-encode at quality 25-35,
    a downscale to half and back, a centre crop of 85-90%, a brightness and colour shift of
    8-15%, a filled rectangle over about 4% of the picture (place and colour from ``rng``)."""
    from PIL import Image, ImageDraw, ImageEnhance

    w, h = image.size
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(25, 36)))
    jpeg = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    half = image.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR).resize(
        (w, h), Image.BILINEAR
    )
    f = rng.uniform(0.85, 0.90)
    cw, ch = max(1, round(w * f)), max(1, round(h * f))
    left, top = (w - cw) // 2, (h - ch) // 2
    crop = image.crop((left, top, left + cw, top + ch))
    brighter = rng.random() < 0.5
    shift = rng.uniform(0.08, 0.15)
    colour = ImageEnhance.Brightness(image).enhance(1 + shift if brighter else 1 - shift)
    colour = ImageEnhance.Color(colour).enhance(1 - rng.uniform(0.08, 0.15))
    overlay = image.copy()
    rw, rh = max(1, round(w * 0.2)), max(1, round(h * 0.2))
    x, y = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    ImageDraw.Draw(overlay).rectangle((x, y, x + rw - 1, y + rh - 1), fill=fill)
    return [jpeg, half, crop, colour, overlay]


def _edit_scores(
    searcher: Any, vectors: dict[int, np.ndarray], ids: list[int], seed: int, dtype: str,
    log: Callable[[str], None], batch: int = 32,
) -> tuple[dict[int, np.ndarray], int]:  # fmt: skip
    """(id -> cosine of its stored embedding with each of its edits', images unreadable):
    the positives. Edit embeddings are rounded to the collection's dtype, as stored ones."""
    from cliplab.data.images import open_rgb
    from cliplab.data.samples import BadSample

    collection = searcher.collection
    scores: dict[int, np.ndarray] = {}
    unreadable = 0
    pending: list[tuple[int, list[Any]]] = []

    def flush() -> None:
        flat = [edit for _, edits in pending for edit in edits]
        if not flat:
            return
        embedded = searcher.embed_images(flat).astype(dtype).astype(np.float32)
        for n, (i, _) in enumerate(pending):
            rows = embedded[n * len(EDITS) : (n + 1) * len(EDITS)]
            scores[i] = rows @ vectors[i]
        pending.clear()

    for n, i in enumerate(ids):
        data = collection.image_bytes(i)
        try:
            if data is None:
                raise BadSample("unreadable", "no bytes")
            picture = open_rgb(data)
            picture.thumbnail((EDIT_SIDE, EDIT_SIDE))
        except BadSample:
            unreadable += 1
            continue
        pending.append((i, synthetic_edits(picture, np.random.default_rng([seed, i]))))
        if len(pending) * len(EDITS) >= batch:
            flush()
        if (n + 1) % 50 == 0:
            log(f"edited {n + 1}/{len(ids)} sampled images")
    flush()
    return scores, unreadable


# --------------------------------------------------------------------------- the report


@dataclass
class DedupReport:
    """What :func:`find_duplicates` found (ids are the collection's; see the module
    docstring). ``similar``: [id_a, id_b, score] with id_a < id_b, best first."""

    threshold: float
    similar_threshold: float
    chosen_on: dict[str, Any]
    exact: list[list[int]]
    near: list[list[int]]
    similar: list[list[Any]]
    counts: dict[str, int]
    fingerprint: str
    generation: int
    seconds: float
    path: str | None = None
    rows: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (``rows``, the metadata kept for :meth:`summary`, left out)."""
        out = asdict(self)
        del out["rows"], out["path"]
        return out

    def summary(self, show: int = 5) -> str:
        """A few lines for people: counts, the threshold and how it was chosen, and the
        first ``show`` groups and similar pairs with their paths or keys."""
        c, how = self.counts, self.chosen_on

        def where(i: int) -> str:
            row = self.rows.get(i) or {}
            return f"{i} {row.get('path') or row.get('key') or '?'}"

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        method = {
            "target-precision": f"the lowest reaching precision {how['target_precision']}",
            "best-f1": f"best F1: no threshold reached precision {how['target_precision']}",
            "given": "given",
        }[how["method"]]
        lines = [
            f"{c['live']} live images; exact groups: {c['exact_groups']} "
            f"({c['exact_redundant']} redundant copies); near-duplicate groups: "
            f"{c['near_groups']} ({c['near_images']} images); similar pairs: {c['similar_pairs']}",
            f"threshold {self.threshold:.4f} ({method}); on {how['images']} sampled images' "
            f"{how['edits']} edits and {how['negatives']} nearest other images: precision "
            f"{pct(how['precision'])}, recall {pct(how['recall'])}; similar from "
            f"{self.similar_threshold:.4f}",
        ]
        if c["unreadable"]:
            lines.append(f"{c['unreadable']} unreadable images left out of the exact check")
        for name, groups in (("exact", self.exact), ("near", self.near)):
            for group in groups[:show]:
                lines.append(f"{name} ({len(group)}): " + ", ".join(where(i) for i in group))
            if len(groups) > show:
                lines.append(f"... {len(groups) - show} more {name} groups")
        for a, b, score in self.similar[:show]:
            lines.append(f"similar {score:.4f}: {where(a)} ~ {where(b)}")
        lines.append(f"{self.seconds:.1f} s" + (f"; report: {self.path}" if self.path else ""))
        return "\n".join(lines)


def find_duplicates(
    collection: str | os.PathLike[str] | Collection,
    *,
    threshold: float | None = None,
    precision: float = 0.99,
    sample: int = 200,
    similar: float | None = None,
    k: int = 10,
    seed: int = 0,
    max_similar: int = 100,
    device: str | None = None,
    searcher: Any = None,
    out: str | os.PathLike[str] | None = None,
    write: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> DedupReport:
    """Find the exact and near duplicates of a collection (see the module docstring) and
    write the report to ``out`` (default ``C/dedup.json``; ``write=False``: not written).
    ``searcher``: a :class:`cliplab.search.query.Searcher` of the collection, when the
    caller has its model loaded already. ``ValueError`` for out-of-range options."""
    if threshold is not None and not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
    if similar is not None and not -1 <= similar <= 1:
        raise ValueError(f"similar must be in [-1, 1], got {similar}")
    if not 0 < precision <= 1:
        raise ValueError(f"precision must be in (0, 1], got {precision}")
    if sample < 1 or k < 1 or max_similar < 0:
        raise ValueError(f"sample and k must be at least 1, got sample={sample}, k={k}")
    started = time.perf_counter()
    if searcher is None:
        from cliplab.search.query import Searcher

        path = collection.path if isinstance(collection, Collection) else collection
        searcher = Searcher(path, device=device, use_index=False)
    collection = searcher.collection
    live = np.flatnonzero(collection.alive())
    if not len(live):
        raise ValueError(f"{collection.path} holds no live images")
    vectors = collection.image_embeddings()

    log(f"hashing {len(live)} live images")
    hashes, from_list, unreadable = content_hashes(collection, live.tolist())
    exact = exact_groups(hashes)
    copies = {i for group in exact for i in group[1:]}
    reps = np.array([i for i in live.tolist() if i not in copies], dtype=np.int64)

    log(f"nearest neighbours of {len(reps)} distinct images")
    sims, rows = nearest_neighbours(vectors[reps], k)
    neighbours = reps[rows] if rows.size else rows

    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(reps), size=min(sample, len(reps)), replace=False))
    log(f"editing {len(picked)} sampled images ({len(EDITS)} edits each)")
    stored = {int(reps[p]): vectors[reps[p]] for p in picked}
    dtype = str(collection.info.get("dtype", "float32"))
    edits, edit_unreadable = _edit_scores(
        searcher, stored, [int(reps[p]) for p in picked], seed, dtype, log
    )
    positives = [edits[int(reps[p])] for p in picked if int(reps[p]) in edits]
    pos = np.concatenate(positives) if positives else np.zeros(0, np.float32)
    # first pass: a neighbour closer than the image's median edit is its near duplicate;
    # second pass: so is one the first threshold groups with it (see the module docstring)
    neg, skipped, _ = _negatives(picked, edits, reps, sims, rows, None)
    first = choose_threshold(pos, neg, precision, threshold)
    neg, _, regrouped = _negatives(
        picked, edits, reps, sims, rows, _group(sims, rows, first.threshold)
    )
    choice = choose_threshold(pos, neg, precision, threshold)
    cut = choice.threshold
    if similar is None:
        similar = float(np.quantile(neg, 0.9)) if len(neg) else cut - 0.05
    similar = min(similar, cut)

    groups = _group(sims, rows, cut)
    members: dict[int, list[int]] = {}
    for p in range(len(reps)):
        members.setdefault(groups.find(p), []).append(int(reps[p]))
    near = _sorted_groups(g for g in members.values() if len(g) > 1)
    pairs: dict[tuple[int, int], float] = {}
    for a, b in zip(*np.nonzero((sims >= similar) & (sims < cut))):
        if groups.find(int(a)) != groups.find(int(rows[a, b])):
            i, j = sorted((int(reps[a]), int(neighbours[a, b])))
            pairs[i, j] = max(pairs.get((i, j), -2.0), float(sims[a, b]))
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    similar_pairs = [[i, j, round(s, 6)] for (i, j), s in ranked[:max_similar]]

    def kind_recall(e: int) -> float | None:
        column = np.array([s[e] for s in positives])
        return None if not len(column) else round(float((column >= cut).mean()), 4)

    chosen_on = {
        "method": choice.method,
        "target_precision": precision,
        "reached": choice.reached,
        "precision": None if choice.precision is None else round(choice.precision, 6),
        "recall": None if choice.recall is None else round(choice.recall, 6),
        "images": len(positives),
        "edits": int(len(pos)),
        "negatives": int(len(neg)),
        "negatives_skipped": skipped,
        "negatives_regrouped": regrouped,
        "first_threshold": first.threshold,
        "unreadable": edit_unreadable,
        "recall_by_edit": {name: kind_recall(e) for e, name in enumerate(EDITS)},
        "seed": seed,
        "sample": sample,
    }
    counts = {
        "images": len(collection),
        "live": len(live),
        "tombstones": len(collection) - len(live),
        "hashes_from_file_list": from_list,
        "hashed": len(hashes) - from_list,
        "unreadable": unreadable,
        "exact_groups": len(exact),
        "exact_images": sum(len(g) for g in exact),
        "exact_redundant": len(copies),
        "near_groups": len(near),
        "near_images": sum(len(g) for g in near),
        "similar_pairs": len(pairs),
        "similar_listed": len(similar_pairs),
        "k": k,
    }
    shown = sorted({i for g in exact + near for i in g} | {i for p in similar_pairs for i in p[:2]})
    report = DedupReport(
        threshold=cut,
        similar_threshold=round(float(similar), 6),
        chosen_on=chosen_on,
        exact=exact,
        near=near,
        similar=similar_pairs,
        counts=counts,
        fingerprint=collection.fingerprint,
        generation=collection.generation,
        seconds=0.0,
        rows=dict(zip(shown, collection.rows(shown))) if shown else {},
    )
    report.seconds = round(time.perf_counter() - started, 3)
    if write:
        target = Path(out) if out is not None else collection.path / REPORT_FILE
        write_json(target, report.to_dict())
        report.path = str(target)
    return report
