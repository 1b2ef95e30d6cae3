"""Image-text data: deterministic resumable streaming, sources, and the synthetic set."""

from cliplab.data.sources import build_source
from cliplab.data.stream import (
    BadSample,
    Batch,
    ImageTextStream,
    RawSample,
    Source,
    StreamingLoader,
    stable_seed,
)
from cliplab.data.synthetic import SyntheticSource

__all__ = [
    "BadSample",
    "Batch",
    "ImageTextStream",
    "RawSample",
    "Source",
    "StreamingLoader",
    "SyntheticSource",
    "build_source",
    "stable_seed",
]
