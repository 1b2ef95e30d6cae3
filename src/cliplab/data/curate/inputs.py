"""Curation's inputs, read through the data layer: manifest tables by
:func:`cliplab.data.manifest.iter_rows` (CSV, TSV, JSONL, Parquet; streamed), WebDataset
shards by :func:`cliplab.data.webdataset.iter_tar_records`, with its checks: a malformed
member, a duplicate key, a truncated or unreadable shard becomes a record with an ``error``
(its reason), which curation counts and skips while the rest of the shard is read."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cliplab.data import storage
from cliplab.data.decode import ERROR_MEMBER
from cliplab.data.manifest import iter_rows, table_format
from cliplab.data.webdataset import SHARD_SUFFIXES, expand_urls, iter_tar_records

__all__ = [
    "FORMATS",
    "TEXT_COLUMNS",
    "Record",
    "detect_format",
    "expand_inputs",
    "read_file_records",
    "read_records",
]

#: Input formats: the manifest tables and ``wds`` (WebDataset tar shards).
FORMATS = ("csv", "tsv", "jsonl", "parquet", "wds")
#: Where the text is, when no column is named: the first of these that holds a string.
TEXT_COLUMNS = ("caption", "text", "TEXT", "title", "alt", "description", "txt")


@dataclass
class Record:
    """One candidate pair: an id, its text, and what to write out if it is kept. ``error``:
    the data layer's reason when the input record is malformed (then it is only counted)."""

    id: str
    text: str
    row: dict[str, Any] | None = None  # table inputs: the row (JSON-able)
    members: dict[str, bytes] | None = None  # WebDataset inputs: the sample's members
    shard: str = ""
    error: str | None = None


def _text_of(row: dict[str, Any], column: str | None) -> str:
    if column is not None:
        value = row.get(column)
    else:
        value = next((row[c] for c in TEXT_COLUMNS if isinstance(row.get(c), str)), None)
    if isinstance(value, list):  # {"captions": [...]}: the first
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v))
        for k, v in row.items()
    }


def detect_format(path: str) -> str:
    """The input format a file name says."""
    lower = path.lower()
    if lower.endswith(SHARD_SUFFIXES):
        return "wds"
    fmt = table_format(path)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path!r} (csv, tsv, jsonl, parquet or tar); pass --format"
        )
    return fmt


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Paths from files, folders (their csv/tsv/jsonl/parquet/tar files), globs and brace patterns."""
    out: list[str] = []
    for item in inputs:
        if "{" in item:
            out.extend(expand_urls(item))
        elif storage.is_dir(item):
            for ext in ("csv", "tsv", "jsonl", "parquet", "tar"):
                out.extend(storage.list_files(item, f".{ext}"))
        elif any(c in item for c in "*?["):
            out.extend(sorted(glob.glob(item)))
        else:
            out.append(item)
    if not out:
        raise FileNotFoundError(f"no input files in {list(inputs)}")
    missing = [p for p in out if not storage.exists(p)]
    if missing:
        raise FileNotFoundError(f"no such input file: {', '.join(missing[:5])}")
    return out


def _wds_text(members: dict[str, bytes], text_column: str | None) -> str:
    if text_column is None and "txt" in members:
        return members["txt"].decode("utf-8", "replace")
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            text = _text_of(meta, text_column)
            if not text and text_column is None and isinstance(meta.get("captions"), list):
                text = _text_of({"captions": meta["captions"]}, "captions")
            return text
    if text_column and text_column in members:
        return members[text_column].decode("utf-8", "replace")
    return ""


def _read_wds(path: str, text_column: str | None) -> Iterator[Record]:
    for sample in iter_tar_records(path):
        if ERROR_MEMBER in sample.members:
            reason = sample.members[ERROR_MEMBER].decode("utf-8", "replace").split("\n")[0]
            yield Record(sample.key, "", shard=path, error=reason)
            continue
        members = dict(sample.members)
        yield Record(sample.key, _wds_text(members, text_column), members=members, shard=path)


def _read_table(
    path: str, fmt: str, text_column: str | None, id_column: str | None
) -> Iterator[Record]:
    name = Path(path).name
    for n, row in enumerate(iter_rows(path, fmt)):
        row_id = str(row.get(id_column, n)) if id_column else f"{name}:{n}"
        yield Record(row_id, _text_of(row, text_column), _jsonable(row))


def read_records(
    inputs: Sequence[str],
    fmt: str = "auto",
    text_column: str | None = None,
    id_column: str | None = None,
) -> Iterator[Record]:
    """Every candidate pair of the inputs, streamed in order."""
    for path in expand_inputs(inputs):
        yield from read_file_records(path, fmt, text_column, id_column)


def read_file_records(
    path: str, fmt: str = "auto", text_column: str | None = None, id_column: str | None = None
) -> Iterator[Record]:
    """The candidate pairs of one input file, in order (the unit a distributed engine deals)."""
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "wds":
        yield from _read_wds(path, text_column)
    elif kind in FORMATS:
        yield from _read_table(path, kind, text_column, id_column)
    else:
        raise ValueError(f"unknown format {kind!r}; expected one of {', '.join(FORMATS)}")
