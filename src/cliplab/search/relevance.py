"""Relevance a person can read, and queries built from several parts.

A cosine similarity of 0.27 means nothing to someone searching their photos, and top-k
always returns k. Per collection, :class:`Calibration` measures once how well *unrelated*
queries match it: the best score each of :data:`NULL_QUERIES` (texts about things a photo
collection does not show: paperwork, sounds, abstractions, nonsense) reaches over the
collection. A hit's relevance is the share of those null queries whose best match scores
below it: 0.99 means "better than what 99% of unrelated queries find anywhere in this
collection". ``min_relevance`` then returns only hits above it, possibly none. Models with
a sigmoid bias (SigLIP) give a probability of their own, ``sigmoid(exp(t) s + b)``, which
is used instead.

The calibration is stored in the collection (``relevance.json``) with the model's
fingerprint and the collection's size, and measured again when either changes.

Queries: ``"beach -people"`` subtracts the embedding of each negative term (a word, or a
quoted phrase ``-"red car"``) at ``negative_weight``; an image and words together are a
weighted mix of their embeddings (:func:`combine`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cliplab.fileio import write_json

__all__ = ["NULL_QUERIES", "Calibration", "combine", "parse_query"]

#: Texts unrelated to what photos show: the reference for "as good as chance".
NULL_QUERIES = (
    "a quarterly tax return form",
    "the sound of a distant train horn",
    "an abstract theory of justice",
    "the smell of fresh bread",
    "a spreadsheet of monthly expenses",
    "the meaning of the word serendipity",
    "a recursive function in a programming language",
    "the taste of bitter coffee",
    "a legal contract clause about liability",
    "the feeling of nostalgia",
    "an error message about a missing file",
    "the history of medieval trade law",
    "a list of prime numbers",
    "the chorus of a pop song",
    "a password reset email",
    "the concept of infinity",
    "zxqv blorpt wuggle",
    "lorem ipsum dolor sit amet",
    "qwerty asdfgh zxcvbn",
    "mnemonic vortex quibble",
    "a footnote in a philosophy paper",
    "the rules of a board game",
    "an insurance policy number",
    "a weather forecast read on the radio",
    "the grammar of the subjunctive mood",
    "a login page for a bank",
    "a ringtone",
    "the melody of a lullaby",
    "a statistical hypothesis test",
    "the boiling point of water",
    "a receipt for a parking ticket",
    "the plot of a mystery novel",
)
CALIBRATION_FILE = "relevance.json"


@dataclass(frozen=True)
class Calibration:
    """The best score each null query reaches over a collection (sorted), or a sigmoid
    (``scale``, ``bias``) for models that have a bias."""

    null_best: tuple[float, ...] = ()
    scale: float | None = None
    bias: float | None = None

    def relevance(self, scores: np.ndarray | Sequence[float]) -> np.ndarray:
        """Relevance in [0, 1] of raw cosine similarities (monotone in the score)."""
        s = np.asarray(scores, dtype=np.float64)
        if self.bias is not None and self.scale is not None:
            return 1.0 / (1.0 + np.exp(-(self.scale * s + self.bias)))
        null = np.asarray(self.null_best, dtype=np.float64)
        below = np.searchsorted(null, s, side="left")
        at_most = np.searchsorted(null, s, side="right")
        return (below + at_most) / (2.0 * len(null))

    @classmethod
    def for_collection(
        cls,
        directory: str | Path,
        fingerprint: str,
        size: int,
        best_scores: Callable[[Sequence[str]], np.ndarray],
        model: Any = None,
        kind: str = "auto",
    ) -> Calibration:
        """The collection's calibration: a SigLIP-style model's own sigmoid (``kind``
        "auto" or "sigmoid"), or (``"auto"`` without a bias, or ``"null"``) the stored
        null-query scores when they were measured for this model and size, else measured
        now with ``best_scores(texts) -> (n,)`` (each text's best similarity) and stored."""
        if kind not in ("auto", "null", "sigmoid"):
            raise ValueError(f"relevance must be auto, null or sigmoid, got {kind!r}")
        bias = getattr(model, "logit_bias", None)
        if kind == "sigmoid" and bias is None:
            raise ValueError("sigmoid relevance needs a model with a logit bias (SigLIP)")
        if bias is not None and kind != "null":
            scale = math.exp(float(model.logit_scale.detach()))
            return cls(scale=scale, bias=float(bias.detach()))
        path = Path(directory) / CALIBRATION_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("fingerprint") == fingerprint and stored.get("size") == size:
                return cls(null_best=tuple(float(v) for v in stored["null_best"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        null = tuple(sorted(float(v) for v in best_scores(NULL_QUERIES)))
        record = {"fingerprint": fingerprint, "size": size, "queries": len(null), "null_best": null}
        with contextlib.suppress(OSError):  # a read-only collection: measured again next time
            write_json(path, record)
        return cls(null_best=null)


_TERM = re.compile(r'(?<=\s)-"([^"]+)"|(?<=\s)-(\S+)')


def parse_query(text: str) -> tuple[str, list[str]]:
    """``(positive text, negative terms)``: ``"beach -people -\\"red car\\""`` ->
    ``("beach", ["people", "red car"])``; a lone ``-`` or a hyphenated word stays text."""
    negatives = [a or b for a, b in _TERM.findall(" " + text) if (a or b).strip("-")]
    positive = _TERM.sub(" ", " " + text) if negatives else text
    return " ".join(positive.split()), negatives


def combine(
    parts: Sequence[tuple[np.ndarray, float]],
    negatives: Sequence[np.ndarray] = (),
    negative_weight: float = 0.5,
) -> np.ndarray:
    """A unit query vector: the weighted sum of unit ``parts`` minus ``negative_weight``
    times the mean of the ``negatives``."""
    if not parts:
        raise ValueError("a query needs words or an image besides its negative terms")
    vector = sum(w * v.astype(np.float64) for v, w in parts)
    if negatives:
        vector = vector - negative_weight * np.mean([n.astype(np.float64) for n in negatives], 0)
    norm = float(np.linalg.norm(vector))
    if not norm > 0:
        raise ValueError("the query's parts cancel out")
    return (vector / norm).astype(np.float32)
