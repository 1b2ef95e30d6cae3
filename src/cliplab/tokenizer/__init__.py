"""CLIP's byte-level BPE tokenizer, id for id identical to OpenAI's.

Two paths to the same ids: :mod:`~cliplab.tokenizer.fast` (what cliplab uses: cached,
vectorised, safe on hostile input) and :mod:`~cliplab.tokenizer.reference` (the algorithm
written plainly, to read and to test the fast path against).
"""

from cliplab.tokenizer.fast import (
    EOT_TEXT,
    SOT_TEXT,
    ContextLengthError,
    Tokenizer,
    bytes_to_unicode,
    decode,
    default_bpe_path,
    default_tokenizer,
    tokenize,
)

__all__ = [
    "EOT_TEXT",
    "SOT_TEXT",
    "ContextLengthError",
    "Tokenizer",
    "bytes_to_unicode",
    "decode",
    "default_bpe_path",
    "default_tokenizer",
    "tokenize",
]
