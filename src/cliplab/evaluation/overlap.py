"""Data overlap analysis (Radford et al. 2021, section 5): is a zero-shot score inflated by
evaluation images that also sit in the pre-training data?

For each evaluation image a near-duplicate detector finds its most similar training image;
the image is in the set's **Overlap** subset when that similarity reaches a threshold, else
in **Clean**. Per set the report gives the share of overlap, zero-shot top-1 on All, Clean
and Overlap, and All - Clean (what duplicates add to the score) with a 95% interval.

- **The detector**: cosine similarity of L2-normalised image embeddings of a CLIP-like image
  tower (by default the evaluated model itself; any other with ``detector=``). Training
  images are read from any source :func:`cliplab.data.sources.spec_for_path` opens (folders,
  WebDataset shards, CSV/Parquet manifests) and decoded as ``cliplab embed`` decodes them
  (:data:`cliplab.search.batches.DECODER`: upright, transparency on white); their features
  are cached per chunk of records (keyed by the model's fingerprint and the records' bytes)
  in the store's ``cache_dir``, as :class:`~cliplab.encode.FeatureStore` caches the rest.
  The nearest training images are found by exact inner product (FAISS ``IndexFlatIP``, or
  numpy without it), one block of training vectors at a time, so memory is bounded by the
  block, not by the training set.
- **The threshold** is chosen on synthetic near-duplicates of the evaluation sets' own
  images, since what "near" means depends on the model and the pictures: up to ``sample``
  images per set (seeded) get the edits of :func:`cliplab.search.dedup.synthetic_edits`
  (a JPEG re-encode, a downscale to half and back, a centre crop of 85-90%, a brightness and
  colour shift, a small filled rectangle). Positives: cosine(image, its edit). Negatives:
  each sampled image's similarity to its nearest *different* training image. Since the
  nearest one may be a real duplicate (the thing we look for), a neighbour at least as
  close as the median of the image's own edits counts as an edit of it and is skipped (and
  counted); the next one is the negative. The threshold is the lowest score whose precision
  reaches ``precision`` (default 0.99; :func:`cliplab.search.dedup.choose_threshold`), the
  best F1 when none does (the report says so); its precision and recall, overall and per
  edit, are reported. That precision is on the pooled edits and negatives (about five
  positives per negative), not on a real set, where duplicates are rare: the report also
  gives the **false-positive rate**, the share of negatives at or above the threshold, i.e.
  the share of a set's images that would be flagged with no duplicate in the training data.
  An overlap share near that rate is what the detector finds by chance.
- **Zero-shot** predictions are the zero-shot protocol's own
  (:func:`cliplab.evaluation.protocols.zeroshot.zero_shot_features` with the set's
  templates), correct by the metrics' tie rule (a tie counts against).
- **The interval** of All - Clean is a bootstrap over the set's images (2,000 resamples,
  seeded, percentile 95%): All and Clean share most images, so their difference is resampled
  as one statistic (each resample draws the counts of clean/overlap x right/wrong images from
  the multinomial of their observed shares, which is the same as resampling images).

Why one module: the steps share one pass's arrays (the training vectors and each set's
neighbour lists give both the threshold's negatives and the sets' overlap) and feed one
report, whose JSON, Markdown and plot are written here so that the command and ``cliplab
reproduce`` show the same thing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cliplab.data.evalsets import ClassificationSet, load_classification
from cliplab.data.sources import SourceSpec, spec_for_path
from cliplab.encode import BadImages, FeatureStore, encode_images, load_cached, save_cached
from cliplab.fileio import write_json, write_text

__all__ = [
    "CI_METHOD",
    "OverlapReport",
    "SetOverlap",
    "TrainingFeatures",
    "bootstrap_difference",
    "embed_training",
    "markdown_from_dict",
    "nearest_training",
    "overlap_analysis",
    "plot_overlap",
    "write_overlap",
]

#: How the interval of All - Clean is computed (written into every report).
CI_METHOD = "bootstrap over images, 2000 resamples, percentile 95% interval"
#: Training records per chunk: one cache file and one encoding call each.
CHUNK = 1024
#: Training vectors per FAISS block: the search's memory is bounded by this many vectors.
BLOCK = 65536
#: Bumped when the training features' computation changes (invalidates cached chunks).
CACHE_VERSION = 1

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------- training images


@dataclass
class TrainingFeatures:
    """The training images' unit-norm detector embeddings (N, D) with, per row, the record's
    key, its file or shard, and the index of its source in ``sources`` (names); ``counts``:
    per source, images embedded and records left out by reason."""

    vectors: np.ndarray
    keys: list[str]
    paths: list[str | None]
    source_of: np.ndarray
    sources: list[str]
    counts: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.keys)


def _chunk_digest(raw: Sequence[tuple[Any, str | None]]) -> str:
    """The records' identity: each key and the SHA-256 of its image member's bytes (cheap
    next to decoding; a changed file changes the digest, a moved one does not)."""
    from cliplab.data.decode import image_member

    h = hashlib.sha256()
    for record, _ in raw:
        h.update(record.key.encode("utf-8", "replace") + b"\0")
        member = image_member(record.members)
        if member is not None:
            h.update(hashlib.sha256(record.members[member]).digest())
    return h.hexdigest()


def _decode_chunk(raw: Sequence[tuple[Any, str | None]]) -> tuple[list[Any], list[int], dict]:
    """(RGB pictures of the good records, their positions, position -> reason of the bad)."""
    from cliplab.data.samples import BadSample
    from cliplab.search.batches import DECODER

    pictures, good, bad = [], [], {}
    for i, (record, _) in enumerate(raw):
        try:
            pictures.append(DECODER.image(record))
            good.append(i)
        except BadSample as e:
            bad[i] = e.reason
    return pictures, good, bad


def _chunk_features(
    store: FeatureStore, raw: Sequence[tuple[Any, str | None]], desc: str
) -> tuple[torch.Tensor, dict[int, str]]:
    """Unit-norm features (len(raw), D) of a chunk of records, NaN rows for the records that
    cannot be decoded (position -> reason). Cached in ``store.cache_dir`` under the model's
    fingerprint, the preprocessing and the records' digest."""
    path = key = None
    if store.cache_dir is not None:
        parts = [CACHE_VERSION, "overlap-train", store.model_key, repr(store.preprocess),
                 _chunk_digest(raw)]  # fmt: skip
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
        path = store.cache_dir / f"features-{key[:40]}.safetensors"
        cached = load_cached(path, key)
        if cached is not None and cached.shape[0] == len(raw):
            missing = torch.isnan(cached).any(dim=1).nonzero().flatten().tolist()
            # the reasons of the few bad records: decode those again
            _, _, bad = _decode_chunk([raw[i] for i in missing])
            return cached, {missing[i]: reason for i, reason in bad.items()}
    pictures, good, bad = _decode_chunk(raw)
    features: torch.Tensor | None = None
    if pictures:
        try:
            x = encode_images(store.model, pictures, store.preprocess, batch_size=store.batch_size,
                              device=store.device, progress=store.progress, desc=desc)  # fmt: skip
        except BadImages as e:  # decoded, yet refused by the preprocessing: left out too
            bad.update({good[i]: reason for i, _, reason in e.failures})
            good = [good[i] for i in e.good]
            if e.features is None or not len(good):
                return torch.full((len(raw), 1), float("nan")), bad
            x = e.features
        x = F.normalize(x.float(), dim=-1)
        features = torch.full((len(raw), x.shape[1]), float("nan"))
        features[good] = x
    if features is None:  # nothing decodable: no width to cache; NaN placeholders
        return torch.full((len(raw), 1), float("nan")), bad
    if path is not None and key is not None:
        save_cached(path, key, features)
    return features, bad


def _training_label(item: str | os.PathLike[str] | SourceSpec) -> tuple[str, SourceSpec]:
    if isinstance(item, SourceSpec):
        label = getattr(item, "set", "") or item.display_name
        return label, item
    text = os.fspath(item)
    try:
        return text, spec_for_path(text)
    except FileNotFoundError:
        raise ValueError(f"training source not found: {text}") from None


def _embed_source(
    store: FeatureStore, label: str, spec: SourceSpec, chunk: int
) -> tuple[list[np.ndarray], list[tuple[str, str | None]], int, Counter[str]]:
    """One source's (feature blocks, (key, file or shard) per embedded image, records read,
    records left out by reason)."""
    from cliplab.search.batches import records

    try:
        source = spec.open()
    except FileNotFoundError as e:
        raise ValueError(f"training source {label}: {e}") from None
    blocks: list[np.ndarray] = []
    where: list[tuple[str, str | None]] = []
    reasons: Counter[str] = Counter()
    read = 0

    def flush(raw: list[tuple[Any, str | None]]) -> None:
        desc = f"{label} images {read - len(raw) + 1}-{read}"
        features, bad = _chunk_features(store, raw, desc)
        ok = ~torch.isnan(features).any(dim=1)
        reasons.update(bad.values())
        reasons["unreadable"] += int((~ok).sum()) - len(bad)
        if ok.any():
            blocks.append(features[ok].numpy().astype(np.float32))
            where.extend((raw[i][0].key, raw[i][1]) for i in ok.nonzero().flatten().tolist())

    raw: list[tuple[Any, str | None]] = []
    for record, path in records(source, 0, lambda _: True):
        raw.append((record, path))
        read += 1
        if len(raw) == chunk:
            flush(raw)
            raw = []
    if raw:
        flush(raw)
    return blocks, where, read, Counter({k: v for k, v in reasons.items() if v > 0})


def embed_training(
    store: FeatureStore,
    sources: Sequence[str | os.PathLike[str] | SourceSpec],
    *,
    chunk: int = CHUNK,
    log: Log = _quiet,
) -> TrainingFeatures:
    """Every image of the training ``sources`` (paths :func:`spec_for_path` opens, or specs)
    embedded by ``store``'s model, in source order, ``chunk`` records at a time (cached; see
    the module docstring). ``ValueError`` when a source is missing or no image is readable."""
    if not sources:
        raise ValueError("no training sources given")
    labelled = [_training_label(s) for s in sources]  # every source checked before any work
    blocks: list[np.ndarray] = []
    where: list[tuple[str, str | None]] = []
    owner: list[np.ndarray] = []
    counts: list[dict[str, Any]] = []
    for s, (label, spec) in enumerate(labelled):
        found, rows, read, reasons = _embed_source(store, label, spec, chunk)
        blocks += found
        where += rows
        owner.append(np.full(len(rows), s, dtype=np.int32))
        counts.append({"source": label, "records": read, "images": len(rows),
                       "left_out": dict(reasons)})  # fmt: skip
        log(f"training source {label}: {len(rows)} images embedded"
            + (f", {sum(reasons.values())} left out ({dict(reasons)})" if reasons else ""))  # fmt: skip
    if not where:
        raise ValueError(
            "no readable training images in " + ", ".join(label for label, _ in labelled)
        )
    return TrainingFeatures(
        vectors=np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32),
        keys=[key for key, _ in where],
        paths=[path for _, path in where],
        source_of=np.concatenate(owner),
        sources=[label for label, _ in labelled],
        counts=counts,
    )


# --------------------------------------------------------------------------- neighbours


def nearest_training(
    queries: np.ndarray, train: np.ndarray, k: int = 1, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """(sims, rows), each (N, min(k, len(train))): every query's ``k`` most similar training
    rows by exact inner product, best first (ties: the earlier row). The training vectors are
    searched ``block`` rows at a time (FAISS ``IndexFlatIP``, numpy when FAISS is missing)
    and the blocks' best merged."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(train))
    n = len(queries)
    best_s = np.full((n, 0), -np.inf, np.float32)
    best_r = np.zeros((n, 0), np.int64)
    if k < 1 or n == 0:
        return best_s, best_r
    try:
        import faiss
    except ImportError:
        faiss = None
    for start in range(0, len(train), block):
        part = np.ascontiguousarray(train[start : start + block], dtype=np.float32)
        kk = min(k, len(part))
        if faiss is not None:
            index = faiss.IndexFlatIP(part.shape[1])
            index.add(part)
            s, r = index.search(queries, kk)
        else:  # a few thousand queries at a time: (rows, block) scores, not (N, block)
            s, r = np.empty((n, kk), np.float32), np.empty((n, kk), np.int64)
            for q in range(0, n, 2048):
                scores = queries[q : q + 2048] @ part.T
                r[q : q + 2048] = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
                s[q : q + 2048] = np.take_along_axis(scores, r[q : q + 2048], axis=1)
        s = np.concatenate([best_s, s.astype(np.float32)], axis=1)
        r = np.concatenate([best_r, r.astype(np.int64) + start], axis=1)
        order = np.lexsort((r, -s), axis=1)[:, :k]  # best first, then the earlier row
        best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    return best_s, best_r


# --------------------------------------------------------------------------- the interval


def bootstrap_difference(
    correct: np.ndarray,
    overlap: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of accuracy(All) - accuracy(Clean) over images
    (``correct`` and ``overlap``: bool per image). Resampling n images with replacement only
    changes how many fall in each of the four cells (clean/overlap x right/wrong), so the
    cells' counts are drawn from their multinomial at once. (0, 0) without overlap (All is
    Clean); None without clean images (no Clean accuracy)."""
    correct, overlap = np.asarray(correct, bool), np.asarray(overlap, bool)
    n = len(correct)
    if n == 0 or overlap.all():
        return None
    if not overlap.any():
        return 0.0, 0.0
    cells = np.array([(~overlap & ~correct).sum(), (~overlap & correct).sum(),
                      (overlap & ~correct).sum(), (overlap & correct).sum()], float)  # fmt: skip
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=resamples)
    clean_n = draws[:, 0] + draws[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = (draws[:, 1] + draws[:, 3]) / n - draws[:, 1] / clean_n
    diff = diff[clean_n > 0]
    tail = (1 - level) / 2
    lo, hi = np.quantile(diff, [tail, 1 - tail])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- the report


@dataclass
class SetOverlap:
    """One evaluation set's overlap with the training data and its accuracy split (fractions
    in [0, 1]; ``difference`` = acc_all - acc_clean with its interval ``ci``)."""

    dataset: str
    path: str
    n: int
    unreadable: int
    overlap: int
    share: float
    acc_all: float
    acc_clean: float | None
    acc_overlap: float | None
    difference: float | None
    ci: list[float] | None
    significant: bool
    false_positive_rate: float | None
    similarity: dict[str, float]
    overlap_indices: list[int]
    examples: list[dict[str, Any]]
    max_similarity: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


@dataclass
class OverlapReport:
    """What :func:`overlap_analysis` found: the threshold and how it was chosen, the training
    data, and one :class:`SetOverlap` per evaluation set."""

    model: str
    detector: str
    threshold: float
    calibration: dict[str, Any]
    training: dict[str, Any]
    sets: list[SetOverlap]
    ci_method: str = CI_METHOD
    seconds: float = 0.0
    positives: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    negatives: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (the score arrays kept for plots are left out)."""
        out = asdict(self)
        del out["positives"], out["negatives"]
        for s in out["sets"]:
            del s["max_similarity"]
        return out

    def set(self, name: str) -> SetOverlap:
        """The result of the set named ``name`` (KeyError if none)."""
        for s in self.sets:
            if s.dataset == name:
                return s
        raise KeyError(name)

    def markdown(self) -> str:
        """The report as Markdown (:func:`markdown_from_dict`)."""
        return markdown_from_dict(self.to_dict())

    def table(self) -> str:
        """A plain-text table for a terminal, with the threshold line."""
        headers = ["set", "images", "overlap", "by chance", "All", "Clean", "Overlap",
                   "All-Clean (95% CI)"]  # fmt: skip
        rows = [headers] + [_row(s, plain=True) for s in self.to_dict()["sets"]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([_threshold_line(self.to_dict()), *lines])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def _row(s: dict[str, Any], plain: bool = False) -> list[str]:
    ci = s.get("ci")
    diff = _pp(s["difference"]) + (f" [{_pp(ci[0])}, {_pp(ci[1])}]" if ci else "")
    mark = "" if plain or not s.get("significant") else " *"
    return [s["dataset"], str(s["n"]), f"{s['overlap']} ({_pct(s['share'])})",
            _pct(s.get("false_positive_rate")), _pct(s["acc_all"]), _pct(s["acc_clean"]), _pct(s["acc_overlap"]),
            diff + mark]  # fmt: skip


def _threshold_line(d: dict[str, Any]) -> str:
    c = d["calibration"]
    how = {
        "target-precision": f"the lowest reaching precision {c['target_precision']}",
        "best-f1": f"best F1: no threshold reached precision {c['target_precision']}",
        "given": "given",
    }.get(c["method"], c["method"])
    return (
        f"detector {d['detector']}: cosine >= {d['threshold']:.4f} ({how}); on "
        f"{c['positives']} synthetic edits of {c['images']} evaluation images and "
        f"{c['negatives']} nearest different training images: precision "
        f"{_pct(c['precision'])}, recall {_pct(c['recall'])}, false-positive rate "
        f"{_pct(c.get('false_positive_rate'))} (the share of test images without a duplicate "
        "that it flags)"
    )


def markdown_from_dict(
    d: dict[str, Any], plot: str | None = None, heading: str = "### Data overlap"
) -> str:
    """A report (:meth:`OverlapReport.to_dict`) as Markdown under ``heading``: the table of
    sets, how the threshold was chosen, the nearest pairs; ``plot``: a PNG file name to show.
    From the dict, so a report can be rewritten from its JSON alone."""
    c, t = d["calibration"], d["training"]
    sources = ", ".join(f"{x['source']} ({x['images']:,})" for x in t["sources"])
    lines = [
        heading,
        "",
        f"Zero-shot model: {d['model']}; detector: {d['detector']}; {t['images']:,} training "
        f"images from {sources}.",
        "",
        "| set | images | overlap | by chance | All | Clean | Overlap | All - Clean, points "
        "(95% CI) |",
        "|---|---|---|---|---|---|---|---|",
        *["| " + " | ".join(_row(s)) + " |" for s in d["sets"]],
        "",
        f"Overlap: test images whose most similar training image reaches the threshold; by "
        "chance: the share of the set's sampled images whose nearest *different* training "
        "image reaches it (what the detector flags with no duplicate there). "
        f"All / Clean / Overlap: zero-shot top-1 on each. The interval: {d['ci_method']}; "
        "* where it excludes 0.",
        "",
        _threshold_line(d)
        + ". Recall by edit: "
        + ", ".join(f"{k} {_pct(v)}" for k, v in c.get("recall_by_edit", {}).items())
        + f"; {c.get('negatives_skipped', 0)} nearest training images skipped as at least as "
        "close as the image's own edits (taken as its duplicates).",
    ]
    if plot:
        lines += ["", f"![overlap]({plot})"]
    shown = [(s["dataset"], e) for s in d["sets"] for e in s["examples"]]
    if shown:
        lines += ["", "Most similar pairs per set:", "",
                  "| set | test image | training image | cosine | duplicate |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, e in shown:
            train = f"{e['train_key']} ({e['train_source']})"
            lines.append(f"| {name} | {e['eval_key']} | {train} | {e['similarity']:.4f} | "
                         f"{'yes' if e['duplicate'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- evaluation sets


def _load_set(item: str | os.PathLike[str] | ClassificationSet) -> tuple[ClassificationSet, str]:
    if isinstance(item, ClassificationSet):
        return item, item.name
    path = Path(item)
    if not path.exists():
        raise ValueError(f"evaluation set not found: {path} (a classification set's directory "
                         "or file, as load_classification reads it)")  # fmt: skip
    try:
        dataset = load_classification(path)
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a classification set: {e}") from None
    if len(dataset) == 0:
        raise ValueError(f"evaluation set {path} holds no images")
    return dataset, str(path)


def _features(
    store: FeatureStore, dataset: ClassificationSet, log: Log
) -> tuple[ClassificationSet, torch.Tensor, int]:
    """(the set's readable images, their unnormalised features, how many were unreadable)."""
    try:
        return dataset, store.dataset(dataset), 0
    except BadImages as e:
        if not e.good or e.features is None:
            raise ValueError(f"evaluation set {dataset.name}: no readable images ({e})") from None
        log(f"{dataset.name}: {len(e.failures)} unreadable images left out ({e})")
        return dataset.subset(e.good), e.features, len(e.failures)


def _edit_scores(
    store: FeatureStore,
    dataset: ClassificationSet,
    vectors: np.ndarray,
    picked: Sequence[int],
    seed: int,
    batch: int = 40,
) -> dict[int, np.ndarray]:
    """Image position -> cosine of its embedding with each of its synthetic edits'."""
    from cliplab.data.samples import BadSample
    from cliplab.search.dedup import EDIT_SIDE, EDITS, synthetic_edits

    scores: dict[int, np.ndarray] = {}
    for start in range(0, len(picked), batch):
        pending: list[tuple[int, list[Any]]] = []
        for i in picked[start : start + batch]:
            try:
                picture = dataset.image(i)
            except BadSample:
                continue
            picture.thumbnail((EDIT_SIDE, EDIT_SIDE))
            pending.append((i, synthetic_edits(picture, np.random.default_rng([seed, i]))))
        flat = [edit for _, edits in pending for edit in edits]
        if not flat:
            continue
        x = encode_images(store.model, flat, store.preprocess, batch_size=store.batch_size,
                          device=store.device)  # fmt: skip
        x = F.normalize(x.float(), dim=-1).numpy()
        for n, (i, _) in enumerate(pending):
            scores[i] = x[n * len(EDITS) : (n + 1) * len(EDITS)] @ vectors[i]
    return scores


# --------------------------------------------------------------------------- the analysis


def overlap_analysis(
    train: Sequence[str | os.PathLike[str] | SourceSpec],
    evalsets: Sequence[str | os.PathLike[str] | ClassificationSet],
    store: FeatureStore,
    detector: FeatureStore | None = None,
    *,
    precision: float = 0.99,
    threshold: float | None = None,
    sample: int = 100,
    k: int = 10,
    examples: int = 5,
    resamples: int = 2000,
    seed: int = 0,
    model_name: str = "",
    detector_name: str = "",
    log: Log = _quiet,
) -> OverlapReport:
    """The paper's overlap analysis (see the module docstring): ``train``, the training
    sources; ``evalsets``, classification-set directories (or sets); ``store``, the evaluated
    model's features (zero-shot); ``detector``, the duplicate detector's (default: the same
    store). ``threshold`` given: used as it is, its precision and recall still measured.
    ``ValueError`` for bad input (a missing set or source, no images, options out of range)."""
    from cliplab.evaluation.metrics import topk_correct
    from cliplab.evaluation.protocols.zeroshot import zero_shot_features
    from cliplab.search.dedup import EDITS, choose_threshold

    if not 0 < precision <= 1:
        raise ValueError(f"precision must be in (0, 1], got {precision}")
    if threshold is not None and not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
    if sample < 1 or k < 1 or resamples < 1:
        raise ValueError(f"sample, k and resamples must be at least 1, got {sample}, {k}, "
                         f"{resamples}")  # fmt: skip
    if not evalsets:
        raise ValueError("no evaluation sets given")
    started = time.perf_counter()
    detector = detector or store
    loaded = [_load_set(item) for item in evalsets]  # every set checked before any work
    log(f"embedding the training images ({len(train)} sources)")
    training = embed_training(detector, train, log=log)

    # each set's detector features and nearest training images
    sets = []
    for dataset, where in loaded:
        dataset, feats, unreadable = _features(detector, dataset, log)
        vectors = F.normalize(feats.float(), dim=-1).numpy()
        sims, rows = nearest_training(vectors, training.vectors, k)
        sets.append((dataset, where, vectors, sims, rows, unreadable))
        log(f"{dataset.name}: nearest training images of {len(dataset)} images")

    # the threshold, on synthetic edits of each set's own images
    rng = np.random.default_rng(seed)
    positives, negatives, by_edit = [], [], []
    per_set: list[list[float]] = []  # each set's negatives: its false-positive rate
    skipped = images = 0
    for s, (dataset, _, vectors, sims, _rows, _) in enumerate(sets):
        per_set.append([])
        picked = np.sort(rng.choice(len(dataset), size=min(sample, len(dataset)), replace=False))
        edits = _edit_scores(detector, dataset, vectors, picked.tolist(), seed + s)
        log(f"{dataset.name}: {len(edits)} images edited ({len(EDITS)} edits each)")
        images += len(edits)
        for i, own in edits.items():
            positives.append(own)
            by_edit.append(own)
            bar = float(np.median(own))
            for score in sims[i]:
                if score >= bar:
                    skipped += 1  # as close as its own edits: taken as its duplicate
                else:
                    negatives.append(float(score))
                    per_set[-1].append(float(score))
                    break
    pos = np.concatenate(positives) if positives else np.zeros(0, np.float32)
    neg = np.asarray(negatives, np.float32)
    if not len(pos) and threshold is None:
        raise ValueError("no evaluation image could be read and edited: give a threshold")
    choice = choose_threshold(pos, neg, precision, threshold)
    cut = choice.threshold
    table = np.asarray(by_edit) if by_edit else np.zeros((0, len(EDITS)))

    def rnd(x: float | None) -> float | None:
        return None if x is None else round(float(x), 6)

    calibration = {
        "method": choice.method,
        "target_precision": precision,
        "reached": choice.reached,
        "precision": rnd(choice.precision),
        "recall": rnd(choice.recall),
        "images": images,
        "positives": int(len(pos)),
        "negatives": int(len(neg)),
        "negatives_skipped": skipped,
        # how often a test image's nearest different training image reaches the threshold:
        # the share of a set expected to be flagged without any duplicate
        "false_positive_rate": rnd((neg >= cut).mean()) if len(neg) else None,
        "recall_by_edit": {
            name: (rnd((table[:, e] >= cut).mean()) if len(table) else None)
            for e, name in enumerate(EDITS)
        },
        "negatives_quantiles": {
            q: rnd(np.quantile(neg, float(q))) if len(neg) else None for q in ("0.5", "0.9", "0.99")
        },  # fmt: skip
        "sample": sample,
        "k": k,
        "seed": seed,
    }
    log(f"threshold {cut:.4f} ({choice.method}): precision {_pct(choice.precision)}, "
        f"recall {_pct(choice.recall)}")  # fmt: skip

    # per set: overlap, and zero-shot on All / Clean / Overlap
    results = []
    for s, (dataset, where, _, sims, rows, unreadable) in enumerate(sets):
        read, features, _ = _features(store, dataset, log)
        if len(read) != len(dataset):  # the detector read images the model cannot
            raise ValueError(f"{dataset.name}: the model cannot read images the detector read")
        logits, _ = zero_shot_features(store, dataset, None, features)
        correct = topk_correct(logits, dataset.labels, 1).cpu().numpy().astype(bool)
        best = sims[:, 0] if sims.shape[1] else np.full(len(dataset), -1.0, np.float32)
        dup = best >= cut
        n, m = len(dataset), int(dup.sum())
        acc_all = float(correct.mean())
        acc_clean = float(correct[~dup].mean()) if m < n else None
        acc_overlap = float(correct[dup].mean()) if m else None
        ci = bootstrap_difference(correct, dup, resamples, seed + s)
        difference = None if acc_clean is None else acc_all - acc_clean
        order = np.argsort(-best, kind="stable")[:examples]
        shown = []
        for i in order.tolist():
            row = int(rows[i, 0])
            meta = dataset.rows[i] if dataset.rows else {}
            shown.append({
                "eval_index": i,
                "eval_key": str(meta.get("key") or meta.get("file") or i),
                "eval_path": str(dataset.images[i]) if not torch.is_tensor(dataset.images)
                else None,
                "train_key": training.keys[row],
                "train_path": training.paths[row],
                "train_source": training.sources[int(training.source_of[row])],
                "similarity": round(float(best[i]), 6),
                "duplicate": bool(dup[i]),
            })  # fmt: skip
        results.append(
            SetOverlap(
                dataset=dataset.name,
                path=where,
                n=n,
                unreadable=unreadable,
                overlap=m,
                share=m / n,
                acc_all=acc_all,
                acc_clean=acc_clean,
                acc_overlap=acc_overlap,
                difference=difference,
                ci=None if ci is None else [ci[0], ci[1]],
                significant=bool(ci is not None and (ci[0] > 0 or ci[1] < 0)),
                false_positive_rate=(
                    round(float(np.mean(np.asarray(per_set[s]) >= cut)), 6) if per_set[s] else None
                ),
                similarity={
                    "median": round(float(np.median(best)), 6),
                    "p99": round(float(np.quantile(best, 0.99)), 6),
                    "max": round(float(best.max()), 6),
                },
                overlap_indices=np.flatnonzero(dup).tolist(),
                examples=shown,
                max_similarity=best,
            )
        )
        log(f"{dataset.name}: {m} of {n} images overlap ({_pct(m / n)}); top-1 all "
            f"{_pct(acc_all)}, clean {_pct(acc_clean)}, overlap {_pct(acc_overlap)}")  # fmt: skip
    return OverlapReport(
        model=model_name or "model",
        detector=detector_name or model_name or "model",
        threshold=float(cut),
        calibration=calibration,
        training={"images": len(training), "sources": training.counts},
        sets=results,
        seconds=round(time.perf_counter() - started, 3),
        positives=pos,
        negatives=neg,
    )


# --------------------------------------------------------------------------- output


def plot_overlap(report: OverlapReport, path: str | os.PathLike[str]) -> Path:
    """Two panels: the threshold's calibration (edits against nearest different training
    images) and each set's distribution of test images' nearest training similarity."""
    from cliplab.evaluation.output import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    every = [report.positives, report.negatives, *(s.max_similarity for s in report.sets)]
    values = np.concatenate([np.asarray(x, np.float64) for x in every if len(x)])
    # the lowest percent left out of the range (strong crops score far below the rest)
    lo = min(report.threshold, float(np.quantile(values, 0.01)))
    bins = np.linspace(math.floor(lo * 100) / 100, 1.0, 60)

    def clipped(x: np.ndarray) -> np.ndarray:
        return np.clip(x, bins[0], 1.0)

    if len(report.positives):
        left.hist(clipped(report.positives), bins=bins, alpha=0.6, density=True,
                  label="edits (positives)")  # fmt: skip
    if len(report.negatives):
        left.hist(clipped(report.negatives), bins=bins, alpha=0.6, density=True,
                  label="nearest different training image (negatives)")  # fmt: skip
    left.set_title("threshold calibration (density)", fontsize=10)
    for s in report.sets:
        if len(s.max_similarity):
            right.hist(clipped(s.max_similarity), bins=bins, histtype="step", density=True,
                       label=f"{s.dataset} ({_pct(s.share)})")  # fmt: skip
    right.set_title("test images: most similar training image", fontsize=10)
    for ax in (left, right):
        ax.axvline(report.threshold, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def write_overlap(report: OverlapReport, out: str | os.PathLike[str]) -> dict[str, Path]:
    """``OUT/overlap.json``, ``OUT/overlap.md`` and (with matplotlib) ``OUT/overlap.png``;
    returns the paths written by kind."""
    from cliplab.evaluation.output import have_matplotlib

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(out / "overlap.json", report.to_dict(), indent=1)}
    plot = None
    if have_matplotlib() and report.sets:
        written["png"] = plot_overlap(report, out / "overlap.png")
        plot = "overlap.png"
    written["md"] = write_text(
        out / "overlap.md", markdown_from_dict(report.to_dict(), plot) + "\n"
    )
    return written
