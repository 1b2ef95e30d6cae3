"""Curation filters: which texts carry no description, and which are not English.

Texts without content are dropped first, each with a reason: ``empty``, ``filename`` (camera
and file names: ``IMG_20160716_113957.JPG``, ``DSC01234``, ``photo.jpg``), ``no-content``
(placeholders like "untitled", only digits and symbols), ``non-english`` (another script, or
words that are not English or are more frequent in another language). The tokenizer here is
curation's own word splitter (not CLIP's BPE): lower-cased NFKC words.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LATIN_LANGUAGES",
    "PLACEHOLDERS",
    "REASONS",
    "STOPWORDS",
    "EnglishFilter",
    "import_wordfreq",
    "junk_reason",
    "normalize",
    "tokenize",
]

#: Why a text was dropped, in the order the checks run.
REASONS = ("empty", "filename", "no-content", "non-english", "no-query", "cap", "balance")


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
        wordfreq = import_wordfreq()
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


def import_wordfreq() -> Any:
    try:
        import wordfreq
    except ImportError as e:
        raise ImportError(
            "the word-frequency query list needs wordfreq: pip install 'cliplab[curate]'"
        ) from e
    return wordfreq
