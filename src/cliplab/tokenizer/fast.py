"""CLIP's byte-level BPE tokenizer, fast path: id for id identical to OpenAI's
``clip/simple_tokenizer.py`` and to :mod:`cliplab.tokenizer.reference`.

Why one module of ~900 lines: every part below serves one function, ``ids = tokenize(texts)``,
and they share private invariants (the packed-id format, the cache, which texts may skip
ftfy); splitting them would expose those invariants across modules for no reader's gain.
The plain algorithm is :mod:`cliplab.tokenizer.reference`.

OpenAI's pipeline, which this module reproduces exactly:

1. clean: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse whitespace runs (``\\s+``)
   to one space, lower-case;
2. pre-tokenize with a regex that splits letter runs, single digits, punctuation runs and
   English contractions, and matches the literal strings ``<|startoftext|>``/``<|endoftext|>``
   (mapped to the special ids, also when a user's text contains them);
3. map each piece's UTF-8 bytes to printable characters, mark its last symbol with ``</w>``,
   and apply the BPE merges in rank order.

Only the route differs, for speed (OpenAI's runs at a few thousand captions/s):

- ftfy is skipped where it provably returns the text unchanged (see :func:`_clean_chunks`);
  on captions it is otherwise the largest single cost;
- a batch is cleaned, joined and split at spaces in bulk, and each chunk of text between
  spaces is looked up in a per-instance cache of packed ids (unbounded, but for chunks longer
  than ``_MAX_CACHED_LEN``), so a warm batch costs a few C-level passes;
- BPE runs on integer ids and never uses OpenAI's quadratic loop: a word that is a token costs
  one dict lookup; the other words of a batch go through OpenAI's merge loop vectorised with
  numpy, or (few words) through an exact backtracking search; words of over
  ``_MAX_BACKTRACK_LEN`` bytes through an O(n log n) heap (a 100k-letter "word" takes well
  under a second; OpenAI's loop would take hours);
- the output tensor is filled in one vectorised numpy step.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import html
import importlib.resources
import operator
import os
import re
import threading
import unicodedata
from array import array
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import compress, filterfalse, repeat
from numbers import Integral

import ftfy
import ftfy.badness
import ftfy.fixes
import numpy as np
import regex
import torch

__all__ = ["ContextLengthError", "Tokenizer", "decode", "default_bpe_path", "tokenize"]

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"

# OpenAI's pre-tokenizer, verbatim (IGNORECASE included: it changes what the specials and the
# contractions match, e.g. "<|ſtartoftext|>" is one piece, though not a special token).
_PRETOKENIZE_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_PAT = regex.compile(_PRETOKENIZE_PATTERN, regex.IGNORECASE)
# The same on ASCII strings, for the stdlib engine (three times faster here): on ASCII, \p{L}
# is A-Za-z, \p{N} is 0-9 and \s is TAB LF VT FF CR SPACE (the tests fuzz the equivalence).
_PAT_ASCII = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+",
    re.IGNORECASE | re.ASCII,
)
_WS = regex.compile(r"\s+")  # OpenAI's whitespace_clean pattern (regex module, as theirs)

_MAX_CACHED_LEN = 256  # chunks longer than this are not cached (hostile inputs)
_MAX_BACKTRACK_LEN = 256  # longer words use the heap BPE: O(n log n) whatever the input
_INT_SIZE = array("i").itemsize  # packed ids are C ints (numpy's intc)
_BATCH_BPE_MIN = 256  # this many words to BPE at once: vectorised (fixed cost ~5 ms)
_NO_MERGE = 1 << 40
_N_BASE = 512  # byte symbols, then the same 256 with "</w>"; merge r creates id 512 + r
# sha256 of OpenAI's bpe_simple_vocab_16e6.txt (decompressed)
_OPENAI_VOCAB_SHA256 = "67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8"

# --- When may ftfy be skipped? ---------------------------------------------------------------
# ftfy.fix_text(text) works per segment (a line, or at most 1M characters) and repeats until a
# pass changes nothing: unescape_html; fix_encoding; the character-wise fixers fix_c1_controls,
# fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks, fix_surrogates,
# remove_terminal_escapes, remove_control_chars; NFC normalisation. Step by step:
# - unescape_html (and html.unescape after ftfy) only act on an "&" followed by a name, "#"
#   or ";" (not by whitespace, nor at the end: _ENTITY_START);
# - fix_encoding returns ASCII text unchanged, and any text for which ftfy.badness.is_bad is
#   False (its first test);
# - the character-wise fixers only act on the characters of _FTFY_TOUCHED and _QUOTES (C0/C1
#   controls, DEL, CR/LF/NEL/LS/PS, ESC, Latin ligatures, fullwidth/halfwidth forms and U+3000,
#   U+206A-206F, BOM and U+FFF9-FFFC, surrogates; quotes: U+02BC, U+2018-201F), and each one
#   character by character; the tests check every other code point against each fixer and fuzz
#   the whole claim against ftfy.fix_text;
# - NFC leaves text unchanged exactly when unicodedata.is_normalized("NFC", text) is True.
# So without those characters, "&", and mojibake by is_bad, NFC text comes back unchanged. With
# curly quotes as the only touched characters, the first pass changes just them (uncurl_quotes)
# and the second pass nothing when the uncurled text passes the same tests; so ftfy returns the
# uncurled text. "\n" is in _FTFY_TOUCHED and longer texts take the slow path, so ftfy sees one
# segment. These facts were checked against ftfy 6.3 (its tables and badness regex); with any
# other version only the ASCII fast path is used, whose argument does not depend on them.
_FTFY_FAST_NONASCII = ftfy.__version__.split(".")[:2] == ["6", "3"]
_FTFY_SEGMENT = 1_000_000  # ftfy's max_decode_length
_ENTITY_START = re.compile("&(?![ \t\n\x0c]|\\Z)")
_ASCII_TOUCHED = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")  # TAB LF FF CR are just spaces
_FTFY_TOUCHED = re.compile(
    "[\x00-\x1f\x7f-\x9f\u0132\u0133\u0149\u01c4-\u01cc\u01f1-\u01f3"
    "\u2028\u2029\u206a-\u206f\u3000\ud800-\udfff\ufb00-\ufb06\ufeff\ufff9-\ufffc\uff00-\uffef]"
)
_QUOTES = re.compile("[\u02bc\u2018-\u201f]")

# ftfy.badness.is_bad(text) searches one big regex (BADNESS_RE) at every position, about a
# microsecond per character. Every alternative of that regex needs at least one character of
# _MOJIBAKE_MARKERS (the tests check each alternative), and no match is longer than
# _MOJIBAKE_WIDTH characters, so matches can only lie in short windows around those
# characters; searching just the windows (with pos/endpos, which keep "^" exact) gives the
# same answer.
_MOJIBAKE_MARKERS = re.compile(
    "["
    + "".join(
        ftfy.badness.MOJIBAKE_CATEGORIES[name]
        for name in (
            "c1",
            "bad",
            "law",
            "currency",
            "start_punctuation",
            "end_punctuation",
            "numeric",
            "upper_accented",
            "box",
        )
    )
    + "\u0152\u0153\u00c2\u00c3\u00ce\u00d0\u00d7\u00d8\u00d9\u00b2\u00b3\u00b5\u00b9\u00bc"
    + "\u00bd\u00be\u00b0\u221a\u2248\u201a\u0402]"
    if _FTFY_FAST_NONASCII
    else "$^"
)
_MOJIBAKE_WIDTH = 7
_BADNESS_SEARCH = ftfy.badness.BADNESS_RE.search if _FTFY_FAST_NONASCII else None


def _is_bad(text: str) -> bool:
    """``ftfy.badness.is_bad(text)``, searching only near characters that mojibake needs."""
    if _MOJIBAKE_MARKERS.search(text) is None:
        return False
    windows: list[list[int]] = []
    reach = _MOJIBAKE_WIDTH - 1
    for match in _MOJIBAKE_MARKERS.finditer(text):
        start = match.start()
        if windows and start - reach <= windows[-1][1]:
            windows[-1][1] = start + reach + 1
        elif len(windows) == 16:
            return ftfy.badness.is_bad(text)  # many markers: one search is as cheap
        else:
            windows.append([max(start - reach, 0), start + reach + 1])
    return any(_BADNESS_SEARCH(text, start, end) for start, end in windows)


def _openai_clean(text: str) -> str:
    """OpenAI's cleaning, verbatim: ftfy, html.unescape x2, strip, collapse whitespace, lower."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = _WS.sub(" ", text.strip()).strip()
    return text.lower()


def _ftfy_unchanged(text: str) -> bool:
    """Does ftfy leave this non-ASCII text (without _FTFY_TOUCHED characters) as it is?"""
    return not _is_bad(text) and unicodedata.is_normalized("NFC", text)


def _clean_chunks(text: str) -> list[str]:
    """:func:`_openai_clean` split at its spaces, skipping ftfy where it provably does nothing.

    On the fast paths no whitespace character is left that ``str.split`` and the pattern
    ``\\s+`` see differently (those are the C0 controls \\x1c-\\x1f, which take the slow
    path), and lower-casing commutes with splitting at whitespace.
    """
    if "&" in text and _ENTITY_START.search(text) is not None:
        pass  # HTML entities: ftfy and html.unescape
    elif text.isascii():  # O(1) in CPython
        if _ASCII_TOUCHED.search(text) is None:
            return text.lower().split()
    elif _FTFY_FAST_NONASCII and len(text) <= _FTFY_SEGMENT and _FTFY_TOUCHED.search(text) is None:
        if _QUOTES.search(text) is None:
            if _ftfy_unchanged(text):
                return text.lower().split()
        elif not _is_bad(text):
            uncurled = ftfy.fixes.uncurl_quotes(text)
            if uncurled.isascii() or _ftfy_unchanged(uncurled):
                return uncurled.lower().split()
    return _openai_clean(text).split(" ")


def _clean(text: str) -> str:
    """The same text as :func:`_openai_clean` (via :func:`_clean_chunks`)."""
    return " ".join(_clean_chunks(text))


def default_bpe_path() -> importlib.resources.abc.Traversable:
    """The BPE vocabulary shipped in the package (OpenAI's ``bpe_simple_vocab_16e6.txt.gz``)."""
    return importlib.resources.files("cliplab") / "assets" / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI/GPT-2 map from the 256 byte values to printable characters (BPE symbols)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _shorten(text: str, limit: int = 80) -> str:
    """``repr`` of ``text`` cut to about ``limit`` characters, for error messages."""
    if len(text) > limit:
        return repr(text[: limit - 20] + "…" + text[-15:]) + f" ({len(text)} chars)"
    return repr(text)


class ContextLengthError(ValueError, RuntimeError):
    """A text has more tokens than the context length and ``truncate`` is False.

    A ``ValueError``; also a ``RuntimeError``, which is what OpenAI's ``clip.tokenize`` raises.
    """


def _pack(ids: Iterable[int]) -> bytes:
    """Ids as native C ints, the cache's format: rows join as bytes, numpy reads them at once."""
    return array("i", ids).tobytes()


class _Cache(dict):
    """``chunk -> its packed ids``; a miss is computed (and stored, unless the key is long)."""

    __slots__ = ("_compute",)

    def __init__(self, compute, initial: dict[str, bytes]) -> None:
        super().__init__(initial)
        self._compute = compute

    def __missing__(self, key: str) -> bytes:
        return self._compute(key)


class Tokenizer:
    """OpenAI CLIP's BPE tokenizer (49,408 ids; SOT 49406, EOT 49407), fast and exact.

    ``encode`` gives the same ids as OpenAI's ``SimpleTokenizer.encode``, calling it the same
    tensor as ``clip.tokenize``. An instance caches the ids of every chunk of text (between
    spaces) it has seen, without bound, so reuse one instance for a data set. Sharing one
    between threads is safe (a cache miss may just be computed twice).
    """

    def __init__(self, bpe_path: str | os.PathLike[str] | None = None) -> None:
        if bpe_path is None:
            with default_bpe_path().open("rb") as f:
                raw = gzip.decompress(f.read())
        else:
            with gzip.open(bpe_path, "rb") as f:
                raw = f.read()
        # OpenAI's slicing and vocabulary order (so the same ids, duplicates included).
        lines = raw.decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in lines]
        byte_encoder = bytes_to_unicode()
        base = list(byte_encoder.values())
        vocab = base + [v + "</w>" for v in base]
        vocab.extend("".join(m) for m in merges)
        vocab.extend([SOT_TEXT, EOT_TEXT])

        self._vocab = vocab
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab))))
        self.decoder: dict[int, str] = {v: k for k, v in self.encoder.items()}
        self.vocab_size: int = len(vocab)
        self.sot_token_id: int = self.encoder[SOT_TEXT]
        self.eot_token_id: int = self.encoder[EOT_TEXT]
        self.byte_encoder = byte_encoder
        self._byte_to_symbol = str.maketrans({chr(b): c for b, c in byte_encoder.items()})
        self._id_bytes: list[bytes] | None = None  # built on first decode

        # Initial BPE symbols of a byte, inside a word and at its end ("</w>").
        enc = self.encoder
        self._byte_ids = [enc[byte_encoder[b]] for b in range(256)]
        self._byte_end_ids = [enc[byte_encoder[b] + "</w>"] for b in range(256)]

        # Merge table on ids: (left << shift | right) -> (rank << shift | merged id). Values
        # order by rank; a later duplicate merge overrides an earlier one, as in OpenAI's
        # bpe_ranks dict. Merges whose parts are not in the vocabulary can never apply.
        self._shift = shift = max(self.vocab_size, 2).bit_length()
        self._id_mask = (1 << shift) - 1
        try:  # every merge of OpenAI's file is a pair of vocabulary tokens
            lefts = [enc[a] for a, _ in merges]
            rights = [enc[b] for _, b in merges]
            merged_ids = [enc[a + b] for a, b in merges]
        except (KeyError, ValueError):  # other files: skip merges that can never apply
            ranks = {}
            for rank, merge in enumerate(merges):
                if len(merge) == 2 and merge[0] in enc and merge[1] in enc:
                    key = enc[merge[0]] << shift | enc[merge[1]]
                    ranks[key] = rank << shift | enc[merge[0] + merge[1]]
            self._ranks = ranks
            self._proper = False
        else:
            keys = [a << shift | b for a, b in zip(lefts, rights)]
            values = [r << shift | m for r, m in enumerate(merged_ids)]
            self._ranks = dict(zip(keys, values))
            self._proper = self._init_proper(
                lefts, rights, merged_ids, hashlib.sha256(raw).hexdigest()
            )

        initial = {
            SOT_TEXT: _pack([self.sot_token_id]),
            EOT_TEXT: _pack([self.eot_token_id]),
            "\x00": _pack([-1]),  # text separator of _encode_batch
        }
        self._cache = _Cache(self._encode_missing, initial)

    def _init_proper(
        self, lefts: list[int], rights: list[int], merged_ids: list[int], digest: str
    ) -> bool:
        """Tables for the fast BPE paths; False where the vocabulary does not allow them.

        They need a "proper" BPE vocabulary, as OpenAI's is: merge ``r`` creates id
        ``512 + r`` from two older tokens, and no token string or merge pair appears twice.
        Then a merged id orders merges like its rank does.
        """
        n_merges = len(merged_ids)
        n_tokens = _N_BASE + n_merges
        if (
            len(self.encoder) != self.vocab_size
            or len(self._ranks) != n_merges
            or merged_ids != list(range(_N_BASE, n_tokens))
            or not all(map(operator.lt, lefts, merged_ids))
            or not all(map(operator.lt, rights, merged_ids))
        ):
            return False
        left = list(range(_N_BASE)) + lefts
        right = list(range(_N_BASE)) + rights
        self._left, self._right = left, right
        self._pair_merged = dict(zip(self._ranks, merged_ids))
        # Sorted merge keys for the vectorised BPE of _bpe_batch.
        keys = np.fromiter(self._pair_merged, np.int64, n_merges)
        order = np.argsort(keys)
        self._merge_keys = keys[order]
        self._merge_ids = np.asarray(merged_ids, dtype=np.int64)[order]
        # Symbol characters -> base ids, and base ids -> their "</w>" variants.
        self._char_ids = np.zeros(max(map(ord, self.byte_encoder.values())) + 1, np.int64)
        self._end_ids = np.arange(_N_BASE, dtype=np.int64)
        for b, c in self.byte_encoder.items():
            self._char_ids[ord(c)] = self._byte_ids[b]
            self._end_ids[self._byte_ids[b]] = self._byte_end_ids[b]

        # Each token as its string of byte symbols, with "</w>" as a single "\x00" (which no
        # byte maps to): a word's tokens are then substrings of the word's symbol string.
        strings = [""] * n_tokens
        for b, c in self.byte_encoder.items():
            strings[self._byte_ids[b]] = c
            strings[self._byte_end_ids[b]] = c + "\x00"
        for merged in range(_N_BASE, n_tokens):
            strings[merged] = strings[left[merged]] + strings[right[merged]]
        self._token_strings = strings
        self._token_length = list(map(len, strings))
        self._shorter = [-2] * n_tokens  # see _shorter_token (-2: not computed yet)
        self._packed = [_pack([token]) for token in range(n_tokens)]
        # A token that BPE never produces, even from its own symbols, is never a candidate.
        # All tokens of OpenAI's vocabulary are reachable (the tests recompute this).
        if digest == _OPENAI_VOCAB_SHA256:
            reachable = [True] * n_tokens
        else:
            reachable = [True] * n_tokens
            for merged in range(_N_BASE, n_tokens):
                a, b = left[merged], right[merged]
                reachable[merged] = (
                    reachable[a] and reachable[b] and self._is_valid_pair(a, b, merged)
                )
        self._reachable = reachable
        self._symbol_tokens = {s: t for t, s in enumerate(strings) if reachable[t]}
        # Length of the longest token starting with each prefix of 1-4 symbols: where the
        # search for the longest token starts probing.
        by_length = sorted(self._symbol_tokens, key=len)
        cap: dict[str, int] = {}
        for k in range(1, 5):
            cap.update({s[:k]: len(s) for s in by_length if len(s) >= k})
        self._prefix_cap = cap
        return True

    # --- from chunks of text to ids ----------------------------------------------------------

    def _encode_missing(self, chunk: str) -> bytes:
        """Packed ids of one chunk that is not in the cache (the cache's ``__missing__``)."""
        return self._encode_chunks((chunk,)).get(chunk) or self._cache[chunk]

    def _encode_chunks(self, chunks: Iterable[str]) -> dict[str, bytes]:
        """Encode distinct chunks of cleaned text into the cache; returns those too long to cache.

        A chunk (text between spaces: no pre-tokenizer match spans a space) of ASCII letters
        is one piece; others are split into pieces. A piece is its own chunk with the same
        ids, so one cache holds both. A piece that is a token needs no BPE (by far the most
        common case); the others go through BPE together, vectorised when there are many (a
        cold cache).
        """
        cache = self._cache
        long: dict[str, bytes] = {}  # results whose keys are too long to cache

        def store(key: str, value: bytes) -> None:
            if len(key) <= _MAX_CACHED_LEN:
                cache[key] = value
            else:
                long[key] = value

        pending: dict[str, str] = {}  # piece -> its symbol string, for BPE
        waiting: list[str | list[str]] = []  # chunk, pieces, ...: chunks with a piece in BPE
        get = cache.get
        proper = self._proper
        get_token = self._symbol_tokens.get if proper else None
        packed = self._packed if proper else []
        to_symbols = self._byte_to_symbol
        for chunk in chunks:
            if chunk.isascii():
                if chunk.isalpha():  # one letter run, the usual case; ASCII letters are symbols
                    if proper:
                        symbols = chunk + "\x00"
                        token = get_token(symbols)
                        if token is not None:
                            store(chunk, packed[token])
                        elif len(symbols) <= _MAX_BACKTRACK_LEN:
                            pending[chunk] = symbols
                        else:
                            store(chunk, _pack(self._bpe_heap(self._byte_symbols(chunk))))
                        continue
                    pieces = [chunk]
                else:
                    pieces = _PAT_ASCII.findall(chunk)
            else:
                pieces = _PAT.findall(chunk)
            in_bpe = False
            for piece in pieces:
                if piece in cache or piece in long:
                    continue
                if piece in pending:
                    in_bpe = True
                    continue
                if proper:
                    symbols = piece.encode("utf-8").decode("latin-1").translate(to_symbols) + "\x00"
                    token = get_token(symbols)
                    if token is not None:
                        store(piece, packed[token])
                        continue
                    if len(symbols) <= _MAX_BACKTRACK_LEN:
                        pending[piece] = symbols
                        in_bpe = True
                        continue
                store(piece, _pack(self._bpe_heap(self._byte_symbols(piece))))
            if len(pieces) == 1 and pieces[0] == chunk:
                continue  # stored as its piece
            if in_bpe:  # (keeping few lists alive spares the garbage collector)
                waiting += (chunk, pieces)
                continue
            try:
                value = b"".join(map(get, pieces))
            except TypeError:  # a piece too long to cache
                value = b"".join([get(piece) or long[piece] for piece in pieces])
            store(chunk, value)
        if len(pending) >= _BATCH_BPE_MIN:
            for piece, value in zip(pending, self._bpe_batch(list(pending.values()))):
                store(piece, value)
        else:
            for piece, symbols in pending.items():
                store(piece, b"".join([packed[t] for t in self._bpe_backtrack(symbols)]))
        for chunk, pieces in zip(waiting[::2], waiting[1::2]):
            try:
                value = b"".join(map(get, pieces))
            except TypeError:  # a piece too long to cache
                value = b"".join([get(piece) or long[piece] for piece in pieces])
            store(chunk, value)
        return long

    def _byte_symbols(self, piece: str) -> list[int]:
        """Initial BPE symbols of a piece: the ids of its UTF-8 bytes, the last with "</w>"."""
        data = piece.encode("utf-8")
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in data[:-1]]
        ids.append(self._byte_end_ids[data[-1]])
        return ids

    # --- BPE -------------------------------------------------------------------------------

    def _is_valid_pair(self, t1: int, t2: int, limit: int = 1 << 62) -> bool:
        """Would BPE keep adjacent tokens ``t1 t2`` apart, using only merges below ``limit``?

        Replays, newest first, the states of the boundary between them: before the later of
        the two was created by its merge, the boundary pair was ``(right(t1), t2)`` or
        ``(t1, left(t2))``, and so on down to bytes. They would merge across if some state's
        pair has a merge older than the creation that ended that state. With equal ids the
        right one was created last (BPE merges left to right). (Inlined in _bpe_backtrack.)
        """
        get = self._pair_merged.get
        shift = self._shift
        left, right = self._left, self._right
        while True:
            merged = get(t1 << shift | t2)
            if merged is not None and merged < limit:
                return False
            if t1 > t2:
                if t1 < _N_BASE:
                    return True
                limit = t1
                t1 = right[t1]
            else:
                if t2 < _N_BASE:
                    return True
                limit = t2 + 1
                t2 = left[t2]

    def _shorter_token(self, token: int) -> int:
        """The longest token that is a proper prefix of ``token`` (as symbols), or -1."""
        shorter = self._shorter[token]
        if shorter == -2:
            string, get = self._token_strings[token], self._symbol_tokens.get
            shorter = next(
                (t for k in range(len(string) - 1, 0, -1) if (t := get(string[:k])) is not None),
                -1,
            )
            self._shorter[token] = shorter
        return shorter

    def _bpe_backtrack(self, symbols: str) -> list[int]:
        """BPE of one word's symbol string (ending in "\\x00" for "</w>"), by search.

        BPE's output is the only segmentation of the word into reachable tokens whose
        neighbours are all valid pairs (:meth:`_is_valid_pair`), so a depth-first search
        trying the longest token first finds it, mostly without backtracking (the
        "backtracking encoder" of GitHub's ``bpe`` crate). Dead ends are remembered per
        (position, previous token), which bounds the search by the number of such states.
        The longest-match search and the pair check are inlined (this loop is the cost of
        a cold cache).
        """
        get = self._symbol_tokens.get
        cap = self._prefix_cap.get
        length = self._token_length
        shorter = self._shorter
        pair_merged = self._pair_merged.get
        left, right, shift = self._left, self._right, self._shift
        n = len(symbols)
        tokens: list[int] = []
        dead: set[int] | None = None
        pos = 0
        last = -1
        token = -1
        size = min(cap(symbols[:4]) or 4, n)
        while size:  # longest token at 0
            token = get(symbols[:size], -1)
            if token >= 0:
                break
            size -= 1
        while True:
            while token >= 0:  # candidates at `pos`, longest first
                valid = True  # _is_valid_pair(last, token), inlined
                if last >= 0:
                    t1, t2, limit = last, token, 1 << 62
                    while True:
                        merged = pair_merged(t1 << shift | t2)
                        if merged is not None and merged < limit:
                            valid = False
                            break
                        if t1 > t2:
                            if t1 < _N_BASE:
                                break
                            limit = t1
                            t1 = right[t1]
                        else:
                            if t2 < _N_BASE:
                                break
                            limit = t2 + 1
                            t2 = left[t2]
                if valid and (dead is None or ((pos + length[token]) << 20 | token) not in dead):
                    break
                next_token = shorter[token]
                token = next_token if next_token != -2 else self._shorter_token(token)
            if token >= 0:
                tokens.append(token)
                pos += length[token]
                if pos == n:
                    return tokens
                last = token
                token = -1
                size = min(cap(symbols[pos : pos + 4]) or 4, n - pos)
                while size:  # longest token at pos
                    token = get(symbols[pos : pos + size], -1)
                    if token >= 0:
                        break
                    size -= 1
            else:  # nothing fits after `last`: take it back and try its shorter alternatives
                if dead is None:
                    dead = set()
                dead.add(pos << 20 | last)
                token = tokens.pop()
                pos -= length[token]
                last = tokens[-1] if tokens else -1
                next_token = shorter[token]
                token = next_token if next_token != -2 else self._shorter_token(token)

    def _merge_lookup(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Merged ids of the pairs ``(left[i], right[i])``, or _NO_MERGE (vectorised)."""
        keys = left << self._shift | right
        index = np.searchsorted(self._merge_keys, keys)
        index[index == self._merge_keys.size] = 0
        return np.where(self._merge_keys[index] == keys, self._merge_ids[index], _NO_MERGE)

    def _bpe_batch(self, words: list[str]) -> list[bytes]:
        """Packed BPE ids of many words' symbol strings at once: OpenAI's loop, vectorised.

        All words advance together: each round finds every word's lowest-ranked pair
        (merged ids order like ranks here) and merges all its occurrences left to right;
        of overlapping occurrences ("a a a") every other one from the left merges, as in
        OpenAI's scan. Only the pairs next to a merge are looked up again. A word leaves
        the batch when no pair of it has a merge.
        """
        lengths = np.fromiter(map(len, words), np.int64, len(words)) - 1  # without "\x00"
        text = "".join([word[:-1] for word in words])
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        sym = self._char_ids[codes]
        is_end = np.zeros(sym.size, dtype=bool)
        is_end[np.cumsum(lengths) - 1] = True
        sym[is_end] = self._end_ids[sym[is_end]]
        rank = np.full(sym.size, _NO_MERGE, dtype=np.int64)  # merge of (sym[i], sym[i + 1])
        rank[:-1] = self._merge_lookup(sym[:-1], sym[1:])
        rank[is_end] = _NO_MERGE
        word_ids = np.arange(len(words))
        done_sym, done_lengths, done_ids = [], [], []
        while sym.size:
            starts = np.cumsum(lengths) - lengths
            best = np.minimum.reduceat(rank, starts)
            finished = best == _NO_MERGE
            if finished.any():
                finished_el = np.repeat(finished, lengths)
                done_sym.append(sym[finished_el])
                done_lengths.append(lengths[finished])
                done_ids.append(word_ids[finished])
                keep, keep_el = ~finished, ~finished_el
                sym, rank, is_end = sym[keep_el], rank[keep_el], is_end[keep_el]
                lengths, word_ids, best = lengths[keep], word_ids[keep], best[keep]
                if not sym.size:
                    break
                starts = np.cumsum(lengths) - lengths
            at = np.flatnonzero(rank == np.repeat(best, lengths))  # occurrences of the pairs
            overlap = np.flatnonzero(at[1:] == at[:-1] + 1)
            if overlap.size:  # runs of overlapping occurrences: keep every other from the left
                follows = np.zeros(at.size, dtype=bool)
                follows[overlap + 1] = True
                run = np.cumsum(~follows) - 1
                at = at[(np.arange(at.size) - np.flatnonzero(~follows)[run]) % 2 == 0]
            sym[at] = rank[at]
            is_end[at] = is_end[at + 1]
            keep_el = np.ones(sym.size, dtype=bool)
            keep_el[at + 1] = False
            lengths = lengths - np.bincount(
                np.searchsorted(starts, at, side="right") - 1, minlength=lengths.size
            )
            sym, rank, is_end = sym[keep_el], rank[keep_el], is_end[keep_el]
            at -= np.arange(at.size)  # positions of the merged symbols after compaction
            right_ok = at[~is_end[at]]
            rank[at[is_end[at]]] = _NO_MERGE
            rank[right_ok] = self._merge_lookup(sym[right_ok], sym[right_ok + 1])
            before = at[at > 0] - 1
            before = before[~is_end[before]]
            rank[before] = self._merge_lookup(sym[before], sym[before + 1])
        out_sym = np.concatenate(done_sym).astype(np.intc).tobytes()
        ends = (np.cumsum(np.concatenate(done_lengths)) * _INT_SIZE).tolist()
        packed: list[bytes] = [b""] * len(words)
        start = 0
        for word, end in zip(np.concatenate(done_ids).tolist(), ends):
            packed[word] = out_sym[start:end]
            start = end
        return packed

    def _bpe_heap(self, symbols: list[int]) -> list[int]:
        """BPE of a word's initial symbols in O(n log n): a heap of (rank, position).

        For very long words and for vocabularies without the tables of the other paths.
        All occurrences of the current lowest rank are merged left to right before any other
        rank, exactly like OpenAI's pass over the word (so overlapping pairs such as "a a a"
        resolve the same way). Heap entries are ints ``value << 32 | position`` over a
        linked list; stale ones are recognised by re-reading the pair at that position.
        """
        get = self._ranks.get
        shift = self._shift
        id_mask = self._id_mask
        n = len(symbols)
        sym = symbols
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            v = get(sym[i] << shift | sym[i + 1])
            if v is not None:
                heap.append(v << 32 | i)
        heapq.heapify(heap)
        pos_mask = (1 << 32) - 1
        heappop, heappush = heapq.heappop, heapq.heappush
        while heap:
            top = heap[0] >> 32
            batch = []
            while heap and heap[0] >> 32 == top:
                batch.append(heappop(heap) & pos_mask)
            batch.sort()
            merged = top & id_mask
            for i in batch:
                j = nxt[i]
                if sym[i] < 0 or j < 0 or get(sym[i] << shift | sym[j]) != top:
                    continue  # stale: this position no longer holds the pair
                k = nxt[j]
                sym[i] = merged
                sym[j] = -1
                nxt[i] = k
                if k >= 0:
                    prv[k] = i
                    v = get(merged << shift | sym[k])
                    if v is not None:
                        heappush(heap, v << 32 | i)
                p = prv[i]
                if p >= 0:
                    v = get(sym[p] << shift | merged)
                    if v is not None:
                        heappush(heap, v << 32 | p)
        out = []
        i = 0
        while i >= 0:
            out.append(sym[i])
            i = nxt[i]
        return out

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` (no SOT/EOT), identical to OpenAI's ``SimpleTokenizer.encode``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return array("i", b"".join(map(self._cache.__getitem__, _clean_chunks(text)))).tolist()

    def _encode_batch(self, texts: list) -> tuple[np.ndarray, np.ndarray]:
        """Ids of all texts as one flat int64 array, and the number of ids of each text.

        The hot loop of :meth:`__call__` (it checks types on the way). It joins the cleaned,
        lower-cased texts into one string, with "\x00" chunks between them (no cleaned text
        keeps a NUL), splits that once, looks every chunk up, and joins the packed ids: the
        "\x00" chunks become -1 markers that give each text's length.
        """
        ascii_touched = _ASCII_TOUCHED.search
        parts: list[str] = []
        append = parts.append
        for index, text in enumerate(texts):
            if text.__class__ is not str and not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be str, not {type(text).__name__}")
            if (
                text.isascii()
                and "&" not in text
                and (text.isprintable() or ascii_touched(text) is None)
            ):
                append(text.lower())  # what _clean_chunks gives, before its split
            else:
                append(" ".join(_clean_chunks(text)))
        append("")
        chunks = " \x00 ".join(parts).split()
        cache = self._cache
        long: dict[str, bytes] = {}
        sample = chunks[:64]
        if sum(map(cache.__contains__, sample)) * 4 < len(sample) * 3:  # cold: encode first
            long = self._encode_chunks(filterfalse(cache.__contains__, dict.fromkeys(chunks)))
        values = list(map(cache.get, chunks))
        try:
            blob = b"".join(values)
        except TypeError:  # some chunks are not cached yet (None): encode them together
            if not long:
                missing = compress(chunks, map(operator.is_, values, repeat(None)))
                long = self._encode_chunks(dict.fromkeys(missing))
                values = list(map(cache.get, chunks))
            if long:
                values = [long[c] if v is None else v for v, c in zip(values, chunks)]
            blob = b"".join(values)
        flat = np.frombuffer(blob, dtype=np.intc)
        ends = np.flatnonzero(flat < 0)
        lengths = np.diff(ends, prepend=-1) - 1
        return flat[flat >= 0].astype(np.int64), lengths

    def __call__(
        self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = False
    ) -> torch.Tensor:
        """``[N, context_length]`` long tensor: SOT, ids, EOT, zero padding (``clip.tokenize``).

        With ``truncate`` an over-long text keeps its first ``context_length - 1`` tokens
        (SOT included) and ends in EOT, as in OpenAI; without it a :class:`ContextLengthError`
        (a ``ValueError``) names the text.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a str or a sequence of str, not {type(texts).__name__}")
        try:
            context_length = operator.index(context_length)  # ints, numpy ints; not floats
        except TypeError:
            kind = type(context_length).__name__
            raise TypeError(f"context_length must be an int, not {kind}") from None
        if context_length < 2:
            raise ValueError(
                f"context_length must be at least 2 (SOT and EOT), got {context_length}"
            )
        texts = list(texts)
        flat, lengths = self._encode_batch(texts)

        n = len(texts)
        room = context_length - 2
        too_long = np.flatnonzero(lengths > room)
        if too_long.size:
            if not truncate:
                i = int(too_long[0])
                raise ContextLengthError(
                    f"text {i} {_shorten(texts[i])} has {int(lengths[i]) + 2} tokens with SOT "
                    f"and EOT, more than the context length {context_length} (truncate=True cuts "
                    "it)"
                )
            starts = np.cumsum(lengths) - lengths
            keep = np.arange(flat.size) - np.repeat(starts, lengths) < room
            flat = flat[keep]
            np.minimum(lengths, room, out=lengths)

        out = np.zeros((n, context_length), dtype=np.int64)
        if n:
            out[:, 0] = self.sot_token_id
            cols = np.arange(context_length)
            out[(cols >= 1) & (cols <= lengths[:, None])] = flat  # row-major, like `flat`
            out[np.arange(n), lengths + 1] = self.eot_token_id
        return torch.from_numpy(out)

    # --- decoding ---------------------------------------------------------------------------

    def _build_id_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each id stands for ("</w>" kept literally, as in OpenAI's decode)."""
        to_bytes = {ord(c): b for b, c in self.byte_encoder.items()}  # str.translate table
        self._id_bytes = [token.translate(to_bytes).encode("latin-1") for token in self._vocab]
        return self._id_bytes

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> str:
        """Text of ``ids`` (a list or 1-D tensor), as OpenAI's ``decode`` gives it.

        SOT and EOT ids are dropped, and so is the zero padding after the last EOT (so a row
        of :meth:`__call__`'s output decodes to its text). As in OpenAI, each word end
        ("</w>") becomes a space, so the text ends in one, and bytes that are not valid UTF-8
        become U+FFFD.
        """
        if isinstance(ids, torch.Tensor | np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"decode takes one sequence (1-D), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = list(ids)
        sot, eot = self.sot_token_id, self.eot_token_id
        if eot in ids:
            last_eot = len(ids) - 1 - ids[::-1].index(eot)
            if not any(ids[last_eot + 1 :]):
                ids = ids[:last_eot]
        id_bytes = self._id_bytes or self._build_id_bytes()
        try:
            if ids and min(ids) < 0:
                raise IndexError
            data = b"".join([id_bytes[i] for i in ids if i != sot and i != eot])
        except (IndexError, TypeError):
            n = self.vocab_size
            bad = next(i for i in ids if not (isinstance(i, Integral) and 0 <= i < n))
            raise ValueError(f"not a token id of this vocabulary: {bad!r}") from None
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


_default_tokenizer: Tokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> Tokenizer:
    """The shared :class:`Tokenizer`, created on first use (importing this module is cheap)."""
    global _default_tokenizer
    if _default_tokenizer is None:
        with _default_lock:
            if _default_tokenizer is None:
                _default_tokenizer = Tokenizer()
    return _default_tokenizer


def tokenize(
    texts: str | Sequence[str], context_length: int = 77, truncate: bool = False
) -> torch.Tensor:
    """Tokenize text(s) into a ``[N, context_length]`` long tensor, like ``clip.tokenize``.

    Rows are SOT, BPE ids, EOT, zeros. ``truncate=True`` cuts over-long texts and ends them in
    EOT; otherwise they raise :class:`ContextLengthError` (a ``ValueError``).
    """
    return default_tokenizer()(texts, context_length=context_length, truncate=truncate)


def decode(ids: Iterable[int] | torch.Tensor | np.ndarray) -> str:
    """Text of a sequence of ids (SOT/EOT and trailing padding dropped); see ``Tokenizer.decode``."""
    return default_tokenizer().decode(ids)
