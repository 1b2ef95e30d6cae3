"""Image-text data: typed source specs, formats (WebDataset, CSV/Parquet manifests, folders,
evaluation sets), robust decoding, deterministic resumable streaming, curation."""

from __future__ import annotations

from cliplab._lazy import lazy_exports

#: Where each public name lives, imported on first use (``cliplab.data.download`` and the
#: manifest readers need no torch).
_EXPORTS = {
    **dict.fromkeys(
        ("KINDS", "SourceSpec", "build_source", "spec_for_path", "spec_from_dict"),
        "cliplab.data.sources",
    ),
    **dict.fromkeys(
        (
            "BadSample",
            "Batch",
            "ImageTextStream",
            "RawSample",
            "Source",
            "StreamingLoader",
            "stable_seed",
        ),
        "cliplab.data.stream",
    ),
    "SyntheticSource": "cliplab.data.synthetic",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
