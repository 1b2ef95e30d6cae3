"""``build_source(spec)``: a data source from a plain dict (a TOML table), by explicit kind.

Kinds:
- ``synthetic``: procedural shapes, no download (``SyntheticSource``);
- ``webdataset``: tar shards, ``urls`` a brace pattern or a list (``WebDatasetSource``);
- ``csv``: a CSV/TSV manifest, ``path`` plus image and caption columns (``CsvSource``);
- ``parquet``: Parquet manifests, needs pyarrow (``ParquetSource``);
- ``folder``: images with sidecar ``.txt`` captions under ``root`` (``FolderSource``).

Each kind's fields are its class's constructor arguments; ``weight`` (for mixing) is read by
the caller, not here.
"""

from __future__ import annotations

from typing import Any

from cliplab.data.manifest import CsvSource, FolderSource, ParquetSource
from cliplab.data.stream import Source
from cliplab.data.synthetic import SyntheticSource
from cliplab.data.webdataset import WebDatasetSource

KINDS = ("synthetic", "webdataset", "csv", "parquet", "folder")


def build_source(spec: dict[str, Any]) -> Source:
    """The source a spec describes, e.g. ``{"kind": "synthetic", "num_samples": 20000}`` or
    ``{"kind": "webdataset", "urls": "data/{00000..00099}.tar"}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    spec.pop("weight", None)
    try:
        match kind:
            case "synthetic":
                return SyntheticSource(**spec)
            case "webdataset":
                return WebDatasetSource(**spec)
            case "csv":
                return CsvSource(**spec)
            case "parquet":
                return ParquetSource(**spec)
            case "folder":
                return FolderSource(**spec)
    except TypeError as e:
        raise ValueError(f"bad fields for data source kind {kind!r}: {e}") from e
    raise ValueError(f"unknown data source kind {kind!r}; expected one of {', '.join(KINDS)}")
