"""The query list (the paper's section 2.2): every English word frequent enough (wordfreq's
Zipf scale stands in for "occurs at least 100 times in English Wikipedia": Zipf 1.5 is about
30 per billion words, i.e. ~100 in Wikipedia's ~3 billion), bigrams with a high pointwise
mutual information in the candidate texts themselves, and every WordNet lemma. Wikipedia
article titles above a search-volume threshold, the paper's fourth part, have no offline
stand-in and are left out. Stop words ("the", "of"...) are not queries: they name nothing.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cliplab.data.curate.filters import STOPWORDS, import_wordfreq, tokenize
from cliplab.fileio import write_text

__all__ = ["QueryList", "build_query_list", "pmi_bigrams", "wordfreq_words", "wordnet_lemmas"]


@dataclass
class QueryList:
    """The queries (normalized, space-joined tokens) and where each came from."""

    queries: list[str]
    origins: list[str]

    def __len__(self) -> int:
        return len(self.queries)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.origins))

    def save(self, path: str | os.PathLike[str]) -> None:
        """One ``query<TAB>origin`` per line."""
        write_text(path, "".join(f"{q}\t{o}\n" for q, o in zip(self.queries, self.origins)))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QueryList:
        """A list saved by :meth:`save`, or a plain file with one query per line."""
        builder = _QueryBuilder()
        with open(path, encoding="utf-8") as f:
            for line in f:
                query, _, origin = line.rstrip("\n").partition("\t")
                builder.add(query, origin or "file")
        return builder.result()


class _QueryBuilder:
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def add(self, text: str, origin: str) -> None:
        tokens = tokenize(text.replace("_", " "))
        if not tokens or (
            len(tokens) == 1
            and (tokens[0] in STOPWORDS or tokens[0].isdigit() or len(tokens[0]) < 2)
        ):
            return
        if all(t in STOPWORDS for t in tokens):
            return
        self.seen.setdefault(" ".join(tokens), origin)

    def result(self) -> QueryList:
        return QueryList(list(self.seen), list(self.seen.values()))


def wordfreq_words(min_zipf: float = 1.5) -> list[str]:
    """English words at or above ``min_zipf`` on wordfreq's large list (alphabetic only)."""
    wordfreq = import_wordfreq()
    threshold = 10 ** (min_zipf - 9)
    return [
        w
        for w, f in wordfreq.get_frequency_dict("en", "large").items()
        if f >= threshold and w.replace("'", "").isalpha()
    ]


def wordnet_lemmas(directory: str | os.PathLike[str]) -> list[str]:
    """Every lemma of WordNet's ``index.{noun,verb,adj,adv}`` files ("ice_cream" -> "ice cream")."""
    root = Path(directory)
    lemmas: dict[str, None] = {}
    found = False
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / f"index.{pos}"
        if not path.is_file():
            continue
        found = True
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):  # the license header
                    continue
                lemma = line.split(" ", 1)[0]
                if lemma:
                    lemmas[lemma.replace("_", " ")] = None
    if not found:
        raise FileNotFoundError(f"no WordNet index.* files in {root}")
    return list(lemmas)


def pmi_bigrams(
    texts: Iterable[str], *, min_count: int = 5, min_pmi: float = 4.0, top: int = 10000
) -> list[tuple[str, float, int]]:
    """Adjacent word pairs with high pointwise mutual information, log2 p(xy) / (p(x) p(y)).

    Stop words and tokens with digits are not paired. Returns ``(bigram, pmi, count)``, the
    ``top`` highest first, among pairs seen ``min_count`` times with PMI >= ``min_pmi``.
    """
    unigrams: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    for text in texts:
        tokens = tokenize(text)
        unigrams.update(tokens)
        for a, b in zip(tokens, tokens[1:]):
            if (
                a not in STOPWORDS
                and b not in STOPWORDS
                and a.isalpha()
                and b.isalpha()
                and len(a) > 1
                and len(b) > 1
            ):
                pairs[(a, b)] += 1
    n_uni = sum(unigrams.values())
    n_pair = sum(pairs.values())
    if not n_pair:
        return []
    scored = []
    for (a, b), c in pairs.items():
        if c < min_count:
            continue
        pmi = math.log2((c / n_pair) / ((unigrams[a] / n_uni) * (unigrams[b] / n_uni)))
        if pmi >= min_pmi:
            scored.append((f"{a} {b}", round(pmi, 3), c))
    scored.sort(key=lambda s: (-s[1], -s[2], s[0]))
    return scored[:top]


def build_query_list(
    *,
    words: Iterable[str] = (),
    wordnet: Iterable[str] = (),
    bigrams: Iterable[str] = (),
    extra: Iterable[str] = (),
) -> QueryList:
    """The union of the parts, normalized and de-duplicated (first origin wins), stop words out."""
    builder = _QueryBuilder()
    for origin, items in (
        ("word", words),
        ("bigram", bigrams),
        ("wordnet", wordnet),
        ("extra", extra),
    ):
        for item in items:
            builder.add(item, origin)
    return builder.result()
