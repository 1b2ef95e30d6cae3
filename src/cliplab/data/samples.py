"""The two things every data module passes around, importable without torch: an undecoded
sample and the exception that rejects one with a counted reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BadSample", "RawSample"]


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short counter name ("truncated-image")."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RawSample:
    """An undecoded sample: WebDataset-style members by extension (``{"png": b"..", "txt": b".."}``).

    ``image``: the sample's prepared pixels, (S, S, 3) uint8, when a cache stage
    (:mod:`cliplab.data.cache`) decoded them already; the stream then draws only the caption.
    """

    key: str
    members: dict[str, bytes]
    source: str = ""
    image: Any = None
