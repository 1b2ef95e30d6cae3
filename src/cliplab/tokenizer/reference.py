"""The reference BPE path: CLIP's tokenizer written the short, obvious way.

This is OpenAI's ``clip/simple_tokenizer.py`` algorithm step by step (clean, pre-tokenize,
bytes to printable characters, merge the lowest-ranked pair until none is left), with no
caches or shortcuts. It is slow (a few thousand captions per second) and quadratic on long
words, and exists to be read and to check :mod:`cliplab.tokenizer.fast` against: the tests
run both on a hostile corpus and require identical ids.
"""

from __future__ import annotations

import gzip
import html
import os

import ftfy
import regex

from cliplab.tokenizer.fast import EOT_TEXT, SOT_TEXT, bytes_to_unicode, default_bpe_path

__all__ = ["ReferenceTokenizer"]

PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def clean(text: str) -> str:
    """ftfy, HTML entities unescaped twice, whitespace runs collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class ReferenceTokenizer:
    """``encode(text) -> ids`` (no SOT/EOT), ``decode(ids) -> text``."""

    def __init__(self, bpe_path: str | os.PathLike[str] | None = None) -> None:
        path = bpe_path if bpe_path is not None else default_bpe_path()
        with gzip.open(path if isinstance(path, str | os.PathLike) else path.open("rb")) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}

    def bpe(self, piece: str) -> list[str]:
        """Merge the lowest-ranked adjacent pair of symbols until no pair has a rank."""
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in PATTERN.findall(clean(text)):
            if piece in (SOT_TEXT, EOT_TEXT):
                ids.append(self.encoder[piece])
                continue
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(chars))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")
