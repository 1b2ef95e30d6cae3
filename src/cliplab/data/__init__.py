"""Image-text data: typed source specs, formats (WebDataset, CSV/Parquet manifests, folders,
evaluation sets), robust decoding, deterministic resumable streaming, curation."""

from cliplab.data.sources import KINDS, SourceSpec, build_source, spec_for_path, spec_from_dict
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
    "KINDS",
    "BadSample",
    "Batch",
    "ImageTextStream",
    "RawSample",
    "Source",
    "SourceSpec",
    "StreamingLoader",
    "SyntheticSource",
    "build_source",
    "spec_for_path",
    "spec_from_dict",
    "stable_seed",
]
