"""Querying a collection (``cliplab search``, the web app): words or an image in, the nearest
images (or captions) out.

The model is the one that embedded the collection: :class:`Searcher` loads it from the
collection's record (or takes one) and refuses a model whose fingerprint differs, since its
embeddings would live in another space. Queries go through the index when there is one,
else through exact search over every embedding.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cliplab.data.images import open_rgb
from cliplab.encode import (
    FeatureStore,
    encode_texts,
    model_device,
    model_dtype,
    model_fingerprint,
)
from cliplab.search.collection import Collection
from cliplab.search.filters import SORTS, Filter, dates, sort_order
from cliplab.search.index import SearchIndex
from cliplab.search.relevance import Calibration, combine, parse_query

__all__ = ["Hit", "Searcher"]

#: The longest text query accepted (characters); the tokenizer truncates to the context.
MAX_QUERY_CHARS = 1000


@dataclass(frozen=True)
class Hit:
    """One result: the image's id, its cosine similarity to the query, its metadata, and
    its relevance (:mod:`cliplab.search.relevance`; None for caption results)."""

    id: int
    score: float
    key: str
    path: str | None
    caption: str | None
    width: int
    height: int
    relevance: float | None = None
    taken: str | None = None  # EXIF capture time (ISO), else the file's mtime; None: unknown
    lat: float | None = None
    lon: float | None = None
    camera: str | None = None  # EXIF make and model

    @classmethod
    def of(cls, index: int, score: float, row: dict[str, Any], relevance: float | None,
           taken: str | None = None) -> Hit:  # fmt: skip
        """A hit from its metadata row (``taken``: its date when the caller has it)."""
        camera = " ".join(x for x in (row.get("make"), row.get("model")) if x) or None
        return cls(
            index, score, row["key"], row["path"], row["caption"], row["width"], row["height"],
            relevance, taken or row.get("taken"), row.get("lat"), row.get("lon"), camera,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": round(self.score, 6),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "key": self.key,
            "path": self.path,
            "caption": self.caption,
            "width": self.width,
            "height": self.height,
            "taken": self.taken,
            "lat": self.lat,
            "lon": self.lon,
            "camera": self.camera,
        }


class _Snapshot:
    """What one snapshot of a collection serves from: the collection as its state names it,
    its index, its tombstones, and caches filled on first use (under ``lock``)."""

    def __init__(self, collection: Collection, index: SearchIndex | None) -> None:
        self.collection, self.index = collection, index
        self.dead = frozenset(collection.deleted.tolist())
        self.alive = collection.alive() if self.dead else None
        self.lock = threading.Lock()
        self.calibration: Calibration | None = None
        self._vectors: np.ndarray | None = None
        self._texts: np.ndarray | None = None
        self._dates: list[str | None] | None = None
        self._masks: dict[Filter, np.ndarray] = {}

    def allowed(self, where: Filter) -> np.ndarray:
        """(N,) bool: live images that pass ``where`` (the last few filters cached)."""
        with self.lock:
            mask = self._masks.get(where)
            if mask is None:
                mask = where.mask(self.collection.metadata)
                if self.dead:
                    mask &= self.alive
                if len(self._masks) >= 32:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[where] = mask
            return mask

    def dates(self) -> list[str | None]:
        """Each id's date (:func:`cliplab.search.filters.dates`)."""
        if self._dates is None:
            self._dates = dates(self.collection.metadata)
        return self._dates

    def vectors(self) -> np.ndarray:
        """(N, D) image embeddings; tombstones' rows are zero."""
        if self._vectors is None:
            vectors = self.collection.image_embeddings()
            if self.dead:
                vectors[~self.alive] = 0.0
            self._vectors = vectors
        return self._vectors

    def texts(self) -> np.ndarray:
        if self._texts is None:
            self._texts = self.collection.text_embeddings()
        return self._texts


class Searcher:
    """Search one collection. ``model``/``preprocess`` default to loading the model the
    collection records (``embed.json``); a given model must have the same fingerprint.
    ``relevance``: how hits' relevance is calibrated (:class:`Calibration`: ``auto``, a
    SigLIP model's sigmoid where it has a bias, else the null queries; ``null``; ``sigmoid``).
    ``runtime``: where queries are encoded (:data:`cliplab.runtime.RUNTIMES`; ``auto``: the
    fastest measured on this machine)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: torch.nn.Module | None = None,
        preprocess: Any = None,
        *,
        device: str | torch.device | None = None,
        use_index: bool = True,
        relevance: str = "auto",
        runtime: str = "torch",
    ) -> None:
        collection = Collection(path)
        self.relevance_kind = relevance
        if model is None:
            import cliplab

            spec = collection.info["model"]
            model, preprocess = cliplab.load(
                spec, device=device, **collection.info.get("model_settings", {})
            )
        fingerprint = model_fingerprint(model)
        if fingerprint != collection.fingerprint:
            raise ValueError(
                f"{collection.path} was embedded with model {collection.info['model']!r} "
                f"(fingerprint {collection.fingerprint[:12]}); this model's fingerprint is "
                f"{fingerprint[:12]}: its embeddings are not comparable. Query with the same model."
            )
        if runtime != "torch":  # queries on a faster runtime (cliplab.runtime; auto: measured)
            from cliplab.runtime import accelerate

            model = accelerate(model, runtime)
        self.model = model.eval()
        self.runtime = getattr(model, "runtime", "torch")
        self.preprocess = preprocess
        self.use_index = use_index
        self._open(collection)
        self._classifiers = FeatureStore(model, preprocess, progress=False)

    def _open(self, collection: Collection) -> None:
        """Read ``collection``'s snapshot: its index (read after the state, so it holds at
        least the snapshot's rows; rows a newer sync added are skipped) and caches. The
        snapshot is one object, swapped in one assignment: a search that started on the old
        one finishes on it."""
        index = None
        if self.use_index and (collection.path / "index" / "info.json").is_file():
            index = SearchIndex(collection)
            if index.rows < len(collection):
                raise ValueError(
                    f"the index holds {index.rows} of {len(collection)} embeddings: "
                    f"run `cliplab index {collection.path}` to add the new ones"
                )
        self._snap = _Snapshot(collection, index)

    @property
    def collection(self) -> Collection:
        return self._snap.collection

    @property
    def index(self) -> SearchIndex | None:
        return self._snap.index

    def refresh(self) -> bool:
        """Move to the collection's newest snapshot if a sync committed one since (a stat of
        ``state.json``); True when it did. Searches in between keep seeing the old one."""
        state = self.collection.path / "state.json"
        try:
            stamp = state.stat().st_mtime_ns
        except OSError:
            return False
        if stamp == getattr(self, "_stamp", None):
            return False
        fresh = Collection(self.collection.path)
        moved = fresh.generation != self.collection.generation
        if moved:
            self._open(fresh)  # if this raises, the stamp stays old: the next call retries
        self._stamp = stamp
        return moved

    def _calibration_of(self, snap: _Snapshot) -> Calibration:
        """A snapshot's relevance calibration (measured once, then read back)."""
        with snap.lock:
            if snap.calibration is None:
                from cliplab.encode import unwrap_model

                def best_scores(texts: Sequence[str]) -> np.ndarray:
                    queries = encode_texts(self.model, None, list(texts)).numpy()
                    vectors = snap.vectors()[snap.collection.alive()]
                    return (vectors @ queries.T.astype(np.float32)).max(axis=0)

                snap.calibration = Calibration.for_collection(
                    snap.collection.path,
                    snap.collection.fingerprint,
                    snap.collection.live,
                    best_scores,
                    unwrap_model(self.model),
                    self.relevance_kind,
                )
            return snap.calibration

    @property
    def calibration(self) -> Calibration:
        """This collection's relevance calibration (measured once, then read back)."""
        return self._calibration_of(self._snap)

    # -- embeddings of queries -------------------------------------------------------------
    @torch.no_grad()
    def embed_text(self, text: str) -> np.ndarray:
        """(D,) unit vector of a text query; ``ValueError`` for an empty or huge one."""
        text = text.strip()
        if not text:
            raise ValueError("empty query")
        if len(text) > MAX_QUERY_CHARS:
            raise ValueError(f"query longer than {MAX_QUERY_CHARS} characters")
        return encode_texts(self.model, None, [text])[0].numpy()

    @torch.no_grad()
    def embed_image(self, image: Any) -> np.ndarray:
        """(D,) unit vector of an image query (a PIL image, image bytes or a file; ``BadSample``
        for an unreadable one), seen as ``cliplab embed`` saw the collection's images: through
        :func:`cliplab.data.images.rgb` (upright, transparency on white)."""
        pixels = self.preprocess(open_rgb(image))[None]
        features = self.model.encode_image(
            pixels.to(model_device(self.model), model_dtype(self.model))
        )
        return F.normalize(features.float(), dim=-1)[0].cpu().numpy()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) unit vectors of texts, batched (``ValueError`` for an empty or huge one)."""
        cleaned = [t.strip() for t in texts]
        if not cleaned or any(not t or len(t) > MAX_QUERY_CHARS for t in cleaned):
            raise ValueError(f"texts must be non-empty and at most {MAX_QUERY_CHARS} characters")
        return encode_texts(self.model, None, cleaned).numpy()

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """(n, D) unit vectors of images (PIL images, bytes or files), batched, as
        :meth:`embed_image` sees each."""
        return self.encode_pixels([self.preprocess(open_rgb(image)) for image in images])

    @torch.no_grad()
    def encode_pixels(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """(n, D) unit vectors of preprocessed images ((3, H, W) tensors from
        ``self.preprocess``): the model pass alone, for a caller that preprocessed them."""
        batch = torch.stack(list(pixels))
        features = self.model.encode_image(
            batch.to(model_device(self.model), model_dtype(self.model))
        )
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    def vector_of(self, index: int) -> np.ndarray:
        """(D,) the stored embedding of image ``index`` ("more like this": no model pass);
        ``IndexError`` for an id that is not a live image of the collection."""
        snap = self._snap
        if not 0 <= index < len(snap.collection) or index in snap.dead:
            raise IndexError(f"no image with id {index}")
        return snap.vectors()[index].copy()

    # -- search ----------------------------------------------------------------------------
    def _all_vectors(self) -> np.ndarray:
        """(N, D) image embeddings of the snapshot; tombstones' rows are zero."""
        return self._snap.vectors()

    def nearest(
        self,
        query: np.ndarray,
        k: int,
        min_relevance: float | None = None,
        *,
        where: Filter | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """The ``k`` images nearest to a unit query vector, each with its relevance, best
        first (``sort``: or by date, :data:`cliplab.search.filters.SORTS`);
        ``min_relevance``: only those at least that relevant (possibly none); ``where``:
        only images that pass the filter, applied inside the search (k results whenever k
        images pass). Safe to call from many threads at once (no model involved)."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
        snap = self._snap
        n, dead, index = len(snap.collection), snap.dead, snap.index
        if n - len(dead) <= 0:
            return []  # every image was deleted
        k = max(1, min(int(k), n - len(dead)))
        if where is not None and not where.empty:
            # exact search over the images that pass: every one of them can be returned
            rows = np.flatnonzero(snap.allowed(where))
            sims = snap.vectors()[rows] @ query.astype(np.float32)
            top = np.argsort(-sims, kind="stable")[:k]
            pairs = [(int(rows[i]), float(sims[i])) for i in top]
        elif index is not None:
            # tombstones and a newer sync's rows are skipped: ask for more until k are left
            ask = min(k + min(len(dead), k) + max(0, index.rows - n), index.ntotal)
            while True:
                scores, ids = index.search(query[None], ask)
                pairs = [
                    (int(i), float(s))
                    for i, s in zip(ids[0], scores[0])
                    if 0 <= i < n and int(i) not in dead
                ][:k]
                if len(pairs) == k or ask >= index.ntotal:
                    break
                ask = min(2 * ask, index.ntotal)
        else:
            sims = snap.vectors() @ query.astype(np.float32)
            if dead:
                sims[~snap.alive] = -np.inf
            top = np.argsort(-sims, kind="stable")[:k]
            pairs = [(int(i), float(sims[i])) for i in top if np.isfinite(sims[i])]
        relevance = self._calibration_of(snap).relevance([s for _, s in pairs])
        keep = [
            (i, s, float(r))
            for (i, s), r in zip(pairs, relevance)
            if min_relevance is None or r >= min_relevance
        ]
        return self._hits(snap, keep, sort)

    def browse(self, where: Filter | None = None, k: int = 20, sort: str = "date") -> list[Hit]:
        """No query: the first ``k`` live images that pass ``where``, newest first (``sort``
        ``oldest``: oldest first; ``score``: in id order). Their score is 0."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
        snap = self._snap
        mask = snap.allowed(where or Filter())
        rows = np.flatnonzero(mask).tolist()
        when = snap.dates()
        order = sort_order(rows, [when[i] for i in rows], sort)[: max(1, int(k))]
        return self._hits(snap, [(rows[p], 0.0, None) for p in order], "score")

    def _hits(
        self, snap: _Snapshot, found: list[tuple[int, float, float | None]], sort: str
    ) -> list[Hit]:
        """Hits of (id, score, relevance) in ``sort`` order."""
        if not found:
            return []
        when = snap.dates()
        ids = [i for i, _, _ in found]
        order = sort_order(ids, [when[i] for i in ids], sort)
        found = [found[p] for p in order]
        rows = snap.collection.rows([i for i, _, _ in found])
        return [Hit.of(i, s, row, rel, when[i]) for (i, s, rel), row in zip(found, rows)]

    def query_vector(
        self,
        text: str | None = None,
        image: Any = None,
        *,
        image_weight: float = 0.5,
        negative_weight: float = 0.5,
        embed_texts: Callable[[list[str]], np.ndarray] | None = None,
        embed_images: Callable[[list[Any]], np.ndarray] | None = None,
    ) -> np.ndarray:
        """The unit vector of a query: words (``-word`` / ``-"a phrase"`` subtract), an
        image, or both mixed (``image_weight`` on the image, the rest on the words).
        ``embed_texts`` / ``embed_images``: how to run the model (default: here, now; the
        server passes its batcher, which runs many requests' queries in one pass)."""
        if not 0 <= image_weight <= 1:
            raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
        positive, negatives = parse_query(text) if text is not None else ("", [])
        if text is not None and not positive and not negatives:
            raise ValueError("empty query")
        texts = ([positive] if positive else []) + list(negatives)
        for t in texts:
            if len(t) > MAX_QUERY_CHARS:
                raise ValueError(f"query longer than {MAX_QUERY_CHARS} characters")
        vectors = list((embed_texts or self.embed_texts)(texts)) if texts else []
        parts = []
        if positive:
            parts.append((vectors.pop(0), 1.0 - image_weight if image is not None else 1.0))
        if image is not None:
            picture = (embed_images or self.embed_images)([image])[0]
            parts.append((picture, image_weight if positive else 1.0))
        return combine(parts, vectors, negative_weight)

    def search(
        self,
        text: str | None = None,
        image: Any = None,
        k: int = 20,
        *,
        min_relevance: float | None = None,
        image_weight: float = 0.5,
        negative_weight: float = 0.5,
        where: Filter | None = None,
        sort: str = "score",
    ) -> list[Hit]:
        """Images for words, an image or both (:meth:`query_vector`), best first (or in
        ``sort`` order), only those that pass ``where``."""
        query = self.query_vector(
            text, image, image_weight=image_weight, negative_weight=negative_weight
        )
        return self.nearest(query, k, min_relevance, where=where, sort=sort)

    def search_text(self, text: str, k: int = 20, min_relevance: float | None = None) -> list[Hit]:
        return self.search(text, None, k, min_relevance=min_relevance)

    def search_image(
        self, image: Any, k: int = 20, min_relevance: float | None = None
    ) -> list[Hit]:
        return self.search(None, image, k, min_relevance=min_relevance)

    def captions_for_image(
        self, image: Any, k: int = 20, vector: np.ndarray | None = None
    ) -> list[Hit]:
        """The ``k`` embedded captions nearest to an image (image -> caption retrieval);
        ``vector``: the image's embedding when the caller has it already."""
        snap = self._snap
        if not snap.collection.has_texts:
            raise ValueError(f"{snap.collection.path} holds no caption embeddings")
        texts = snap.texts()
        sims = texts @ (self.embed_image(image) if vector is None else vector)
        sims[np.linalg.norm(texts, axis=1) == 0] = -np.inf  # images without a caption
        if snap.dead:
            sims[~snap.alive] = -np.inf
        top = [
            int(i) for i in np.argsort(-sims, kind="stable")[: max(1, k)] if np.isfinite(sims[i])
        ]
        rows = snap.collection.rows(top)
        return [Hit.of(i, float(sims[i]), r, None) for i, r in zip(top, rows)]

    def classify(
        self,
        image: Any,
        labels: Sequence[str],
        templates: Sequence[str],
        members: Sequence[Sequence[str]] | None = None,
    ) -> list[tuple[str, float]]:
        """Zero-shot probabilities of ``labels`` for an image, best first (prompt ensembles
        are cached per label list); ``members``: sub-labels a label may score by."""
        from cliplab.zeroshot import ZeroShotHead

        head = ZeroShotHead.build(self._classifiers, labels, templates, members)
        probs = head.probs(torch.from_numpy(self.embed_image(image))[None])[0]
        order = probs.argsort(descending=True).tolist()
        return [(labels[i], float(probs[i])) for i in order]
