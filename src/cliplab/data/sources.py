"""``build_source(spec)``: a data source from a plain dict (a TOML table), by explicit kind.

Kinds: ``synthetic`` (procedural shapes, no download). Each kind's fields are its class's
constructor arguments; ``weight`` (for mixing) is read by the caller, not here.
"""

from __future__ import annotations

from typing import Any

from cliplab.data.stream import Source
from cliplab.data.synthetic import SyntheticSource

KINDS = ("synthetic",)


def build_source(spec: dict[str, Any]) -> Source:
    """The source a spec describes, e.g. ``{"kind": "synthetic", "num_samples": 20000}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    spec.pop("weight", None)
    try:
        if kind == "synthetic":
            return SyntheticSource(**spec)
    except TypeError as e:
        raise ValueError(f"bad fields for data source kind {kind!r}: {e}") from e
    raise ValueError(f"unknown data source kind {kind!r}; expected one of {', '.join(KINDS)}")
