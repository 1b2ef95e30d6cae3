"""WIT-style curation (``cliplab data curate``): keep the image-text pairs whose text names a
query, at most ``cap`` pairs per query, as the paper built its 400M-pair WebImageText set.

The recipe (Radford et al. 2021, section 2.2, and the YFCC100M filtering it recalls):

1. A query list: every English word frequent enough (wordfreq's Zipf scale stands in for
   "occurs at least 100 times in English Wikipedia": Zipf 1.5 is about 30 per billion words,
   i.e. ~100 in Wikipedia's ~3 billion), bigrams with a high pointwise mutual information in
   the candidate texts themselves, and every WordNet lemma (``wordnet-base``). Wikipedia
   article titles above a search-volume threshold, the paper's fourth part, have no offline
   stand-in and are left out. Stop words ("the", "of"...) are not queries: they name nothing.
2. Texts without content are dropped first, each with a reason: ``empty``, ``filename``
   (camera and file names: ``IMG_20160716_113957.JPG``, ``DSC01234``, ``photo.jpg``),
   ``no-content`` (placeholders like "untitled", only digits and symbols), ``non-english``
   (another script, or words that are not English or are more frequent in another language).
3. A text matches the queries it contains as whole words (Aho-Corasick over the text with
   spaces around each token: ``pyahocorasick`` when installed, else an equivalent n-gram
   hash lookup; never a loop over the queries). No match: ``no-query``.
4. The cap: each kept pair is counted against the least-used query it matches; a pair is
   dropped (``cap``) only when every query it matches already has ``cap`` pairs. The paper's
   cap is 20,000; frequent queries cannot crowd out the rare ones.

Input is streamed in bounded memory (CSV/TSV, JSONL, Parquet with pyarrow, WebDataset shards,
whose non-text members are passed through untouched); texts are checked and matched in worker
processes, chunk by chunk, and the cap is applied in input order in the main process, so the
result does not depend on the number of workers. Output: ``kept.jsonl`` (one line per kept
pair: its id, text, the query it counts for and the input row), kept WebDataset samples as
shards when the input is shards, and ``report.json`` + ``report.md``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import multiprocessing
import os
import re
import sys
import tarfile
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REASONS",
    "CurateConfig",
    "EnglishFilter",
    "QueryList",
    "QueryMatcher",
    "TextChecker",
    "build_query_list",
    "curate",
    "junk_reason",
    "pmi_bigrams",
    "read_records",
    "tokenize",
    "wordnet_lemmas",
]

#: Why a text was dropped, in the order the checks run.
REASONS = ("empty", "filename", "no-content", "non-english", "no-query", "cap")


def _wordlist(text: str) -> list[str]:
    return text.split()


STOPWORDS = frozenset(
    _wordlist(
        """a about above after again against all am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each few for from further had hadn't has hasn't have haven't
    having he he'd he'll he's her here here's hers herself him himself his how how's i i'd i'll
    i'm i've if in into is isn't it it's its itself let's me more most mustn't my myself no nor
    not of off on once only or other ought our ours ourselves out over own same shan't she
    she'd she'll she's should shouldn't so some such than that that's the their theirs them
    themselves then there there's these they they'd they'll they're they've this those through
    to too under until up very was wasn't we we'd we'll we're we've were weren't what what's
    when when's where where's which while who who's whom why why's with won't would wouldn't
    you you'd you'll you're you've your yours yourself yourselves also just via per etc"""
    )
)

#: Texts that are placeholders, not descriptions.
PLACEHOLDERS = frozenset(
    _wordlist(
        """image img photo photos picture pic pict untitled no title notitle thumbnail thumb default
    null none nan n a na unknown test placeholder download click here jpg jpeg png gif file
    screenshot screen shot snapshot scan copy new"""
    )
) | {"no title", "n a", "click here", "screen shot", "image not found", "no image", "not available"}

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_EXTENSION = re.compile(
    r"\.(?:jpe?g|jpe|jfif|png|gif|bmp|tiff?|heic|heif|webp|raw|cr2|cr3|nef|dng|arw|orf|rw2|mp4|mov|avi|3gp|svg)\s*$",
    re.I,
)
_CAMERA_PREFIX = (
    r"(?:img|image|imag|dsc|dscn|dscf|dsci|dcim|pic|pict|picture|p|mvi|vid|video|gopr|gp|dji|sam|wp|"
    r"pxl|photo|foto|bild|scan|screenshot|screen\s*shot|capture|snapshot|cimg|sdc|hpim|kif|mov|clip|"
    r"file|untitled|pano|burst|signal|whatsapp\s*image|fb_img|received|edited|copy\s*of)"
)
#: "IMG_1234", "DSC01234", "P1010234", "20160716_113957", "IMG-20160716-WA0003", "image (3)"
_CAMERA = re.compile(
    rf"^{_CAMERA_PREFIX}?[\s_\-]*(?:\(\d+\)$|\d{{2,}})(?:[\s_\-.:]*(?:wa|at|x)?[\s_\-.:]*\d+)*[a-z]?(?:[\s_\-]*(?:hdr|edit|edited|copy|burst\w*|cover|\(\d+\)|~\d+))*$",
    re.I,
)
_HASH = re.compile(r"^(?=[a-z0-9]*\d)(?=[a-z0-9]*[a-z])[a-z0-9]{16,}$")
_TIMESTAMP = re.compile(r"\d{8}|\d{4}[-_.]\d{2}[-_.]\d{2}[\s_\-.at]+\d{1,2}[.:_\-]\d{2}")


def normalize(text: str) -> str:
    """NFKC, curly apostrophes straightened, lower case."""
    return unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'").lower()


def tokenize(text: str) -> list[str]:
    """Lower-cased words (letters and digits; inner apostrophes kept: "don't", "o'clock")."""
    return _TOKEN.findall(normalize(text))


def junk_reason(text: str, tokens: Sequence[str] | None = None) -> str | None:
    """``empty``, ``filename`` or ``no-content`` when the text carries no description, else None."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    tokens = tokenize(stripped) if tokens is None else tokens
    base = _EXTENSION.sub("", stripped).strip()
    has_letters = any(c.isalpha() for c in base)
    if _EXTENSION.search(stripped) and len(tokens) <= 4:
        return "filename"
    if base and (has_letters or _TIMESTAMP.search(base)) and _CAMERA.match(base):
        return "filename"
    if _TIMESTAMP.search(stripped) and len([t for t in tokens if t.isalpha()]) <= 2:
        return "filename"
    if len(tokens) == 1 and _HASH.match(tokens[0]):  # uploads named by a hash or an id
        return "filename"
    words = [t for t in tokens if t.isalpha() and len(t) >= 2]
    if not words:
        return "no-content"
    visible = [c for c in stripped if not c.isspace()]
    if sum(c.isalpha() for c in visible) < 0.5 * len(visible):
        return "no-content"
    if " ".join(tokens) in PLACEHOLDERS:
        return "no-content"
    return None


# --------------------------------------------------------------------------- language


def _latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if c < "\u0250") / len(letters)  # Basic Latin .. Latin Extended-B


@dataclass
class EnglishFilter:
    """Is a text English? Its letters must be mostly Latin, and at least ``need`` of its
    words English: in the English list at Zipf >= ``vocab_zipf`` and not clearly more frequent
    in another Latin-script language (by ``margin`` Zipf). ``Ein Dachs.`` fails ("ein" is far
    more German than English, "dachs" is not English); ``A badger.`` passes."""

    english: dict[str, float]
    other: dict[str, float] = field(default_factory=dict)
    vocab_zipf: float = 1.5
    margin: float = 1.0
    need: float = 0.5
    min_latin: float = 0.7

    def __call__(self, text: str, tokens: Sequence[str]) -> bool:
        if _latin_share(text) < self.min_latin:
            return False
        words = [t for t in tokens if len(t) > 1 and not t.isdigit()]
        if not words:
            return False
        good = 0
        for w in words:
            z = self.english.get(w, 0.0)
            if z >= self.vocab_zipf and z >= self.other.get(w, 0.0) - self.margin:
                good += 1
        return good >= self.need * len(words)

    @classmethod
    def from_words(cls, words: Iterable[str], **options: Any) -> EnglishFilter:
        """A filter from a plain vocabulary (no frequencies: every listed word counts)."""
        return cls({w: 9.0 for w in [*words, *STOPWORDS]}, **options)

    @classmethod
    def from_wordfreq(cls, other_min_zipf: float = 3.0, **options: Any) -> EnglishFilter:
        """English frequencies from wordfreq's large list; other languages' common words
        (Zipf >= ``other_min_zipf``) from its small lists of Latin-script languages."""
        wordfreq = _import_wordfreq()
        english = {
            w: math.log10(f) + 9 for w, f in wordfreq.get_frequency_dict("en", "large").items()
        }
        available = set(wordfreq.available_languages("small"))
        other: dict[str, float] = {}
        for lang in LATIN_LANGUAGES:
            if lang not in available:
                continue
            for w, f in wordfreq.get_frequency_dict(lang, "small").items():
                z = math.log10(f) + 9
                if z >= other_min_zipf and z > other.get(w, 0.0):
                    other[w] = z
        return cls(english, other, **options)


#: wordfreq languages in Latin script, compared against English word by word.
LATIN_LANGUAGES = (
    "ca",
    "cs",
    "da",
    "de",
    "es",
    "fi",
    "fil",
    "fr",
    "hu",
    "id",
    "is",
    "it",
    "lt",
    "lv",
    "ms",
    "nb",
    "nl",
    "pl",
    "pt",
    "ro",
    "sh",
    "sk",
    "sl",
    "sv",
    "tr",
    "vi",
)


def _import_wordfreq() -> Any:
    try:
        import wordfreq
    except ImportError as e:
        raise ImportError(
            "the word-frequency query list needs wordfreq: pip install 'cliplab[curate]'"
        ) from e
    return wordfreq


# --------------------------------------------------------------------------- queries


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
        with open(path, "w", encoding="utf-8") as f:
            for q, o in zip(self.queries, self.origins):
                f.write(f"{q}\t{o}\n")

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
    wordfreq = _import_wordfreq()
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


class QueryMatcher:
    """All queries a text contains as whole words, as query indices (sorted, unique).

    With pyahocorasick: one automaton over ``" q "`` keys run on ``" " + tokens + " "``.
    Without: every token n-gram up to the longest query looked up in a dict; both are linear
    in the text (times the longest query's length), whatever the number of queries.
    """

    def __init__(self, queries: Sequence[str], use_automaton: bool | None = None) -> None:
        self.queries = list(queries)
        self.longest = max((q.count(" ") + 1 for q in self.queries), default=0)
        try:
            import ahocorasick
        except ImportError:
            ahocorasick = None
        if use_automaton and ahocorasick is None:
            raise ImportError("pyahocorasick is not installed: pip install 'cliplab[curate]'")
        self.automaton = None
        if ahocorasick is not None and use_automaton is not False:
            automaton = ahocorasick.Automaton()
            for i, q in enumerate(self.queries):
                automaton.add_word(f" {q} ", i)
            if len(automaton):
                automaton.make_automaton()
                self.automaton = automaton
        self.index = (
            None if self.automaton is not None else {q: i for i, q in enumerate(self.queries)}
        )

    def __call__(self, tokens: Sequence[str]) -> list[int]:
        if not tokens or not self.queries:
            return []
        if self.automaton is not None:
            return sorted({i for _, i in self.automaton.iter(" " + " ".join(tokens) + " ")})
        assert self.index is not None
        found = set()
        for n in range(1, min(self.longest, len(tokens)) + 1):
            for i in range(len(tokens) - n + 1):
                j = self.index.get(" ".join(tokens[i : i + n]))
                if j is not None:
                    found.add(j)
        return sorted(found)


class TextChecker:
    """One text -> ``(reason, [])`` when dropped before the cap, else ``(None, query ids)``."""

    def __init__(self, matcher: QueryMatcher, english: EnglishFilter | None) -> None:
        self.matcher = matcher
        self.english = english

    def __call__(self, text: str) -> tuple[str | None, list[int]]:
        tokens = tokenize(text)
        reason = junk_reason(text, tokens)
        if reason is not None:
            return reason, []
        if self.english is not None and not self.english(text, tokens):
            return "non-english", []
        found = self.matcher(tokens)
        if not found:
            return "no-query", []
        return None, found


# --------------------------------------------------------------------------- input


@dataclass
class Record:
    """One candidate pair: an id, its text, and what to write out if it is kept."""

    id: str
    text: str
    row: dict[str, Any] | None = None  # table inputs: the row (JSON-able)
    members: dict[str, bytes] | None = None  # WebDataset inputs: the sample's members
    shard: str = ""


TEXT_COLUMNS = ("caption", "text", "TEXT", "title", "alt", "description", "txt")


def _text_of(row: dict[str, Any], column: str | None) -> str:
    if column is not None:
        value = row.get(column)
    else:
        value = next((row[c] for c in TEXT_COLUMNS if isinstance(row.get(c), str)), None)
    if isinstance(value, list):  # {"captions": [...]}: the first
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v))
        for k, v in row.items()
    }


def detect_format(path: str) -> str:
    lower = path.lower()
    for suffix, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
        (".tar", "wds"),
    ):
        if lower.endswith(suffix) or lower.endswith(suffix + ".gz"):
            return fmt
    raise ValueError(
        f"cannot tell the format of {path!r} (csv, tsv, jsonl, parquet or tar); pass --format"
    )


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Paths from files, folders (their csv/tsv/jsonl/parquet/tar files), globs and brace patterns."""
    out: list[str] = []
    for item in inputs:
        if "{" in item:
            from cliplab.data.webdataset import expand_urls

            out.extend(expand_urls(item))
        elif Path(item).is_dir():
            for ext in ("csv", "tsv", "jsonl", "parquet", "tar"):
                out.extend(sorted(str(p) for p in Path(item).glob(f"*.{ext}")))
        elif any(c in item for c in "*?["):
            out.extend(sorted(glob.glob(item)))
        else:
            out.append(item)
    if not out:
        raise FileNotFoundError(f"no input files in {list(inputs)}")
    return out


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        import gzip

        return io.TextIOWrapper(
            gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline=""
        )
    return open(path, encoding="utf-8", errors="replace", newline="")  # noqa: SIM115


def _read_table(
    path: str, fmt: str, text_column: str | None, id_column: str | None
) -> Iterator[Record]:
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(
                "reading Parquet needs pyarrow: pip install 'cliplab[parquet]'"
            ) from e
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield Record(
                    str(row.get(id_column, n)) if id_column else f"{Path(path).name}:{n}",
                    _text_of(row, text_column),
                    _jsonable(row),
                )
                n += 1
        return
    with _open_text(path) as f:
        if fmt == "jsonl":
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = {"_malformed": line[:200]}
                if not isinstance(row, dict):
                    row = {"_value": row}
                yield Record(
                    str(row.get(id_column, n)) if id_column else f"{Path(path).name}:{n}",
                    _text_of(row, text_column),
                    row,
                )
        else:
            csv.field_size_limit(1 << 24)
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            for n, row in enumerate(reader):
                yield Record(
                    str(row.get(id_column, n)) if id_column else f"{Path(path).name}:{n}",
                    _text_of(row, text_column),
                    dict(row),
                )


def _wds_text(members: dict[str, bytes], text_column: str | None) -> str:
    if text_column is None and "txt" in members:
        return members["txt"].decode("utf-8", "replace")
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            text = _text_of(meta, text_column)
            if not text and text_column is None and isinstance(meta.get("captions"), list):
                text = _text_of({"captions": meta["captions"]}, "captions")
            return text
    if text_column and text_column in members:
        return members[text_column].decode("utf-8", "replace")
    return ""


def _read_wds(path: str, text_column: str | None) -> Iterator[Record]:
    """Samples of one tar shard (members grouped by key, as webdataset does); a broken
    shard ends quietly: what could be read is curated, the rest is lost with the shard."""
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                directory, _, base = info.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not stem or not dot:
                    continue
                member_key = f"{directory}/{stem}" if directory else stem
                if member_key != key:
                    if key is not None:
                        yield Record(
                            key, _wds_text(members, text_column), members=members, shard=path
                        )
                    key, members = member_key, {}
                f = tar.extractfile(info)
                members[ext.lower()] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        print(f"curate: {path}: {e} (the rest of this shard is skipped)", file=sys.stderr)
        return
    if key is not None:
        yield Record(key, _wds_text(members, text_column), members=members, shard=path)


def read_records(
    inputs: Sequence[str],
    fmt: str = "auto",
    text_column: str | None = None,
    id_column: str | None = None,
) -> Iterator[Record]:
    """Every candidate pair of the inputs, streamed in order."""
    for path in expand_inputs(inputs):
        kind = detect_format(path) if fmt == "auto" else fmt
        if kind == "wds":
            yield from _read_wds(path, text_column)
        elif kind in ("csv", "tsv", "jsonl", "parquet"):
            yield from _read_table(path, kind, text_column, id_column)
        else:
            raise ValueError(f"unknown format {kind!r}")


# --------------------------------------------------------------------------- curation


@dataclass
class CurateConfig:
    """The recipe's knobs (defaults: the paper's cap, a Wikipedia-like frequency threshold)."""

    cap: int = 20000
    min_zipf: float = 1.5
    use_wordfreq: bool = True
    wordnet_dir: str | None = None  # None: the installed wordnet-base, if any
    use_wordnet: bool = True
    bigrams: int = 10000
    bigram_min_count: int = 5
    bigram_min_pmi: float = 4.0
    pmi_sample: int = 200_000
    extra_queries: tuple[str, ...] = ()
    queries_file: str | None = None  # a saved query list replaces the parts above
    language: str | None = "en"  # None: keep every language
    english_need: float = 0.5
    english_margin: float = 1.0
    english_vocab: tuple[str, ...] = ()  # without wordfreq: the English vocabulary to use
    workers: int = 0  # 0: one process per CPU core but one; 1: in this process
    chunk_size: int = 2000
    limit: int | None = None
    write_shards: bool = True
    max_samples_per_shard: int = 10000
    progress_every: float = 5.0


_CHECKER: TextChecker | None = None


def _init_worker(queries: list[str], english: EnglishFilter | None) -> None:
    global _CHECKER
    _CHECKER = TextChecker(QueryMatcher(queries), english)


def _check_chunk(texts: list[str]) -> list[tuple[str | None, list[int]]]:
    assert _CHECKER is not None
    return [_CHECKER(t) for t in texts]


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _default_wordnet() -> str | None:
    try:
        from cliplab.data.install import source_path

        return str(source_path("wordnet-base"))
    except FileNotFoundError:
        return None


def _english_filter(
    config: CurateConfig, words: Sequence[str], lemmas: Sequence[str]
) -> EnglishFilter | None:
    if config.language is None:
        return None
    if config.language != "en":
        raise ValueError(
            f"only English filtering is implemented (language='en' or None), got {config.language!r}"
        )
    options = {"need": config.english_need, "margin": config.english_margin}
    if config.english_vocab:
        return EnglishFilter.from_words(config.english_vocab, **options)
    if config.use_wordfreq:
        return EnglishFilter.from_wordfreq(**options)
    return EnglishFilter.from_words(
        [*words, *(w for lemma in lemmas for w in lemma.split())], **options
    )


def prepare(
    inputs: Sequence[str],
    config: CurateConfig,
    fmt: str = "auto",
    text_column: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[QueryList, EnglishFilter | None, dict[str, Any]]:
    """The query list and the language filter for these inputs (reads a sample for the PMI bigrams)."""
    info: dict[str, Any] = {}
    start = time.perf_counter()
    if config.queries_file:
        queries = QueryList.load(config.queries_file)
        info["queries_file"] = config.queries_file
    else:
        words = wordfreq_words(config.min_zipf) if config.use_wordfreq else []
        lemmas: list[str] = []
        if config.use_wordnet:
            directory = config.wordnet_dir or _default_wordnet()
            if directory is None:
                log(
                    "curate: WordNet not found (python -m cliplab.data.install --only wordnet-base); no WordNet queries"
                )
            else:
                lemmas = wordnet_lemmas(directory)
                info["wordnet"] = directory
        english = _english_filter(config, words, lemmas)
        bigrams: list[tuple[str, float, int]] = []
        if config.bigrams > 0:
            # statistics of the texts that can be kept: content, in the language asked for
            sample = (
                r.text
                for r, _ in zip(read_records(inputs, fmt, text_column), range(config.pmi_sample))
            )
            eligible = (
                t
                for t in sample
                if junk_reason(t) is None and (english is None or english(t, tokenize(t)))
            )
            bigrams = pmi_bigrams(
                eligible,
                min_count=config.bigram_min_count,
                min_pmi=config.bigram_min_pmi,
                top=config.bigrams,
            )
            info["bigram_examples"] = bigrams[:20]
        queries = build_query_list(
            words=words,
            wordnet=lemmas,
            bigrams=[b for b, _, _ in bigrams],
            extra=config.extra_queries,
        )
    if config.queries_file:
        english = _english_filter(config, [q for q in queries.queries if " " not in q], [])
    info["queries"] = {"total": len(queries), **queries.counts()}
    info["prepare_seconds"] = round(time.perf_counter() - start, 2)
    return queries, english, info


def curate(
    inputs: Sequence[str],
    out: str | os.PathLike[str],
    config: CurateConfig | None = None,
    *,
    fmt: str = "auto",
    text_column: str | None = None,
    id_column: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Curate ``inputs`` into ``out`` (kept.jsonl, shards/ for shard inputs, report.json/.md)."""
    config = config or CurateConfig()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    queries, english, info = prepare(inputs, config, fmt, text_column, log)
    log(
        f"curate: {len(queries):,} queries ({', '.join(f'{k} {v:,}' for k, v in queries.counts().items())}); prepared in {info['prepare_seconds']} s"
    )
    queries.save(out_dir / "queries.tsv")

    # the main process reads, applies the cap and writes: it keeps a core for itself
    workers = config.workers or max(1, (os.cpu_count() or 1) - 1)
    records = read_records(inputs, fmt, text_column, id_column)
    if config.limit is not None:
        records = (r for r, _ in zip(records, range(config.limit)))
    kept_per_query = [0] * len(queries)
    cap_drops: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    total = kept = 0
    writer = None
    start = time.perf_counter()
    last_log = start

    def consume(chunk: list[Record], results: list[tuple[str | None, list[int]]]) -> None:
        nonlocal total, kept, writer
        for record, (reason, found) in zip(chunk, results):
            total += 1
            if reason is None:
                q = min(found, key=lambda i: (kept_per_query[i], i))
                if kept_per_query[q] >= config.cap:
                    reason = "cap"
                    cap_drops[q] += 1
                else:
                    kept_per_query[q] += 1
                    kept += 1
                    line = {"id": record.id, "text": record.text, "query": queries.queries[q]}
                    if record.row is not None:
                        line["row"] = record.row
                    if record.members is not None:
                        line["shard"] = record.shard
                        if config.write_shards:
                            writer = writer or _shard_writer(out_dir, config)
                            writer.write(
                                f"{kept - 1:09d}", _with_curation(record, queries.queries[q])
                            )
                    kept_file.write(json.dumps(line, ensure_ascii=False) + "\n")
                    continue
            reasons[reason] += 1
            bucket = examples.setdefault(reason, [])
            if len(bucket) < 8:
                bucket.append(record.text[:200])

    with open(out_dir / "kept.jsonl", "w", encoding="utf-8") as kept_file:
        if workers <= 1:
            _init_worker(queries.queries, english)
            for chunk in _chunks(records, config.chunk_size):
                consume(chunk, _check_chunk([r.text for r in chunk]))
                last_log = _progress(log, start, last_log, total, kept, config.progress_every)
        else:
            context = multiprocessing.get_context(
                "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            )
            with context.Pool(
                workers, initializer=_init_worker, initargs=(queries.queries, english)
            ) as pool:
                pending: deque[tuple[list[Record], Any]] = deque()
                for chunk in _chunks(records, config.chunk_size):
                    pending.append(
                        (chunk, pool.apply_async(_check_chunk, ([r.text for r in chunk],)))
                    )
                    while (
                        len(pending) > 2 * workers
                    ):  # bounded: at most 2 chunks per worker in flight
                        done, result = pending.popleft()
                        consume(done, result.get())
                        last_log = _progress(
                            log, start, last_log, total, kept, config.progress_every
                        )
                while pending:
                    done, result = pending.popleft()
                    consume(done, result.get())
    shards = writer.close() if writer is not None else None
    seconds = time.perf_counter() - start
    report = _report(
        queries,
        kept_per_query,
        cap_drops,
        reasons,
        examples,
        total,
        kept,
        seconds,
        workers,
        config,
        info,
        shards,
    )
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    log(
        f"curate: {total:,} texts in {seconds:.1f} s ({report['texts_per_second']:,.0f} texts/s, {workers} worker(s)); kept {kept:,} ({report['kept_fraction']:.1%})"
    )
    log(f"curate: dropped {dict(reasons.most_common())}; report in {out_dir / 'report.md'}")
    return report


def _progress(
    log: Callable[[str], None], start: float, last: float, total: int, kept: int, every: float
) -> float:
    now = time.perf_counter()
    if now - last < every:
        return last
    log(f"curate: {total:,} texts, {total / max(now - start, 1e-9):,.0f} texts/s, kept {kept:,}")
    return now


def _shard_writer(out_dir: Path, config: CurateConfig) -> Any:
    from cliplab.data.webdataset import ShardWriter

    return ShardWriter(
        out_dir / "shards", prefix="curated", max_samples=config.max_samples_per_shard
    )


def _with_curation(record: Record, query: str) -> dict[str, bytes]:
    members = dict(record.members or {})
    meta: Any = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError:
            meta = {}
    if not isinstance(meta, dict):
        meta = {"value": meta}
    meta.update(curate_query=query, source_key=record.id)
    members["json"] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    return members


def _report(
    queries: QueryList,
    kept_per_query: list[int],
    cap_drops: Counter[int],
    reasons: Counter[str],
    examples: dict[str, list[str]],
    total: int,
    kept: int,
    seconds: float,
    workers: int,
    config: CurateConfig,
    info: dict[str, Any],
    shards: dict[str, Any] | None,
) -> dict[str, Any]:
    hit = [(queries.queries[i], n) for i, n in enumerate(kept_per_query) if n]
    hit.sort(key=lambda x: (-x[1], x[0]))
    at_cap = [q for q, n in hit if n >= config.cap]
    return {
        "texts": total,
        "kept": kept,
        "kept_fraction": kept / total if total else 0.0,
        "dropped": {r: reasons.get(r, 0) for r in REASONS},
        "drop_examples": examples,
        "seconds": round(seconds, 2),
        "texts_per_second": round(total / seconds, 1) if seconds > 0 else 0.0,
        "workers": workers,
        "queries": info.get("queries", {}),
        "queries_hit": len(hit),
        "queries_at_cap": len(at_cap),
        "cap": config.cap,
        "cap_effects": {
            "dropped_by_cap": reasons.get("cap", 0),
            "queries_at_cap": at_cap[:50],
            "most_capped": [(queries.queries[i], n) for i, n in cap_drops.most_common(20)],
        },
        "top_queries": hit[:30],
        "bigram_examples": info.get("bigram_examples", []),
        "shards": {k: v for k, v in shards.items() if k != "shards"}
        | {"count": len(shards["shards"])}
        if shards
        else None,
        "config": {k: v for k, v in asdict(config).items() if k != "english_vocab"},
        "prepare_seconds": info.get("prepare_seconds"),
    }


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Curation report",
        "",
        f"- texts: {r['texts']:,}; kept: {r['kept']:,} ({r['kept_fraction']:.1%})",
        f"- speed: {r['texts_per_second']:,.0f} texts/s with {r['workers']} worker(s), {r['seconds']} s (query list prepared in {r['prepare_seconds']} s)",
        f"- queries: {r['queries']}; hit: {r['queries_hit']:,}; at the cap of {r['cap']:,}: {r['queries_at_cap']:,}",
        "",
        "## Drops by reason",
        "",
        "| reason | texts | examples |",
        "|---|---:|---|",
    ]
    for reason, n in r["dropped"].items():
        ex = "; ".join(f"`{e[:60]}`" for e in r["drop_examples"].get(reason, [])[:3]).replace(
            "|", "\\|"
        )
        lines.append(f"| {reason} | {n:,} | {ex} |")
    lines += [
        "",
        "## Cap effects",
        "",
        f"{r['cap_effects']['dropped_by_cap']:,} texts dropped because all their queries were full.",
    ]
    if r["cap_effects"]["most_capped"]:
        lines.append(
            "Most capped queries: "
            + ", ".join(f"{q} ({n:,})" for q, n in r["cap_effects"]["most_capped"][:10])
        )
    lines += ["", "## Top queries (kept pairs)", ""]
    lines.append(", ".join(f"{q} ({n:,})" for q, n in r["top_queries"][:30]) or "(none)")
    if r["bigram_examples"]:
        lines += [
            "",
            "## High-PMI bigrams (sample)",
            "",
            ", ".join(f"{b} ({p:.1f})" for b, p, _ in r["bigram_examples"][:20]),
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        help="CSV/TSV/JSONL/Parquet files, tar shards, folders, globs or brace patterns",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (kept.jsonl, shards/, report.json, report.md)"
    )
    parser.add_argument(
        "--format", default="auto", choices=("auto", "csv", "tsv", "jsonl", "parquet", "wds")
    )
    parser.add_argument(
        "--text-column",
        default=None,
        help=f"the text field (default: first of {', '.join(TEXT_COLUMNS)})",
    )
    parser.add_argument("--id-column", default=None, help="the id field (default: file:row)")
    parser.add_argument(
        "--cap", type=int, default=20000, help="pairs per query at most (paper: 20,000)"
    )
    parser.add_argument(
        "--min-zipf",
        type=float,
        default=1.5,
        help="word queries: wordfreq Zipf threshold (1.5 ~ 100 uses in Wikipedia)",
    )
    parser.add_argument(
        "--no-wordfreq",
        action="store_true",
        help="no word-frequency queries (and a vocabulary-only English check)",
    )
    parser.add_argument(
        "--wordnet", default=None, help="WordNet dict folder (default: the installed wordnet-base)"
    )
    parser.add_argument("--no-wordnet", action="store_true", help="no WordNet queries")
    parser.add_argument(
        "--bigrams", type=int, default=10000, help="how many high-PMI bigrams (0: none)"
    )
    parser.add_argument("--bigram-min-count", type=int, default=5)
    parser.add_argument("--bigram-min-pmi", type=float, default=4.0, help="log2 PMI threshold")
    parser.add_argument(
        "--pmi-sample", type=int, default=200_000, help="texts read for the bigram statistics"
    )
    parser.add_argument(
        "--queries", default=None, help="a query list file (one per line) instead of building one"
    )
    parser.add_argument("--any-language", action="store_true", help="keep non-English texts")
    parser.add_argument(
        "--workers", type=int, default=0, help="processes (default: cores - 1; 1: no pool)"
    )
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=None, help="stop after this many texts")
    parser.add_argument(
        "--no-shards", action="store_true", help="shard inputs: write kept.jsonl only"
    )


def run(args: argparse.Namespace) -> int:
    config = CurateConfig(
        cap=args.cap,
        min_zipf=args.min_zipf,
        use_wordfreq=not args.no_wordfreq,
        wordnet_dir=args.wordnet,
        use_wordnet=not args.no_wordnet,
        bigrams=args.bigrams,
        bigram_min_count=args.bigram_min_count,
        bigram_min_pmi=args.bigram_min_pmi,
        pmi_sample=args.pmi_sample,
        queries_file=args.queries,
        language=None if args.any_language else "en",
        workers=args.workers,
        chunk_size=args.chunk_size,
        limit=args.limit,
        write_shards=not args.no_shards,
    )
    try:
        curate(
            args.inputs,
            args.out,
            config,
            fmt=args.format,
            text_column=args.text_column,
            id_column=args.id_column,
        )
    except ImportError as e:  # a missing optional extra
        raise ValueError(str(e)) from e
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cliplab.data.curate", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
