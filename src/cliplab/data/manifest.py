"""Sources from image files on disk: CSV and Parquet manifests, and folders with sidecar captions;
and :func:`iter_rows`, the streaming reader of manifest tables (CSV, TSV, JSONL, Parquet) that
every table reader here and curation use.

Each record is a ``RawSample`` shaped like a WebDataset sample: the image bytes under their
extension (``jpg``, ``png`` ...; ``img`` when neither the file name nor the bytes tell),
the caption as ``txt``, and any other manifest columns as ``json``. A file that is missing
becomes an error record (``missing-file``; ``unreadable-file`` for other OS errors) that the
decoder rejects and the loader counts, so a manifest with holes still trains.

Splitting: CSV and folder rows are dealt round-robin to streams and reshuffled each pass
with ``stable_seed(seed, epoch, stream, pass, name)`` (a source with fewer rows than
streams is shared whole, not split); Parquet row groups are split like tar shards
(``webdataset.stream_share``), read in order within a group. ``iter_raw`` reads the image
files but decodes nothing, so fast-forwarding on resume costs only I/O.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cliplab.data import storage
from cliplab.data.decode import error_sample
from cliplab.data.images import IMAGE_EXTS
from cliplab.data.stream import RawSample, stable_seed
from cliplab.data.webdataset import iter_units, stream_share

__all__ = [
    "TABLE_FORMATS",
    "CsvSource",
    "FolderSource",
    "ParquetSource",
    "image_ext",
    "iter_rows",
    "table_format",
]

#: Manifest table formats :func:`iter_rows` reads (the text ones also gzip-compressed).
TABLE_FORMATS = ("csv", "tsv", "jsonl", "parquet")


def table_format(path: str | os.PathLike[str]) -> str | None:
    """The table format a file name says (``.csv``, ``.tsv``, ``.jsonl``/``.json``,
    ``.parquet``, the text ones optionally ``.gz``), or None."""
    lower = str(path).lower()
    for suffix, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
    ):
        if lower.endswith(suffix) or (fmt != "parquet" and lower.endswith(suffix + ".gz")):
            return fmt
    return None


def csv_reader(f: Any, delimiter: str) -> csv.DictReader:
    """A ``DictReader`` that allows fields up to 16 MB (long alt texts, embedded JSON)."""
    csv.field_size_limit(1 << 24)
    return csv.DictReader(f, delimiter=delimiter)


def iter_rows(
    path: str | os.PathLike[str], fmt: str | None = None, delimiter: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every row of a manifest table as a dict, streamed in bounded memory. A JSONL line that
    is not a JSON object becomes ``{"_malformed": <its start>}`` (or ``{"_value": v}``), so
    a reader can count it instead of failing."""
    path = os.fspath(path)
    fmt = fmt or table_format(path)
    if fmt == "parquet":
        pq = _pyarrow_parquet()
        with storage.open_binary(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                yield from batch.to_pylist()
        return
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"{path}: not a table ({', '.join(TABLE_FORMATS)}); got format {fmt!r}")
    with storage.open_text(path) as f:
        if fmt == "jsonl":
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = {"_malformed": line[:200]}
                yield row if isinstance(row, dict) else {"_value": row}
            return
        yield from csv_reader(f, delimiter or ("\t" if fmt == "tsv" else ","))


_MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def image_ext(name: str, data: bytes = b"") -> str:
    """The member extension for an image file: its suffix when it is an image suffix
    (``jpeg`` -> ``jpg``), else what its first bytes say, else ``img``."""
    suffix = os.path.splitext(name)[1].lower().lstrip(".")
    suffix = "jpg" if suffix == "jpeg" else suffix
    if suffix in IMAGE_EXTS:
        return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return "img"


def _read_image(key: str, path: str, source: str) -> RawSample | bytes:
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        return error_sample(key, "missing-file", source, str(path))
    except (OSError, ImportError) as e:  # a directory, no permission, an I/O error
        return error_sample(key, "unreadable-file", source, f"{path}: {e}")


def _sample(
    key: str, image: str | bytes, caption: str | None, extra: dict[str, Any], source: str
) -> RawSample:
    """A record from an image location (read now) or image bytes, a caption and extra
    columns."""
    name = ""
    if isinstance(image, str):
        name = posixpath.basename(image)
        data = _read_image(key, image, source)
        if isinstance(data, RawSample):
            return data
    else:
        data = image
    members = {image_ext(name, data): data}
    if caption is not None:
        members["txt"] = caption.encode("utf-8", "surrogateescape")
    if extra:
        members["json"] = json.dumps(extra, ensure_ascii=False, default=str).encode("utf-8")
    return RawSample(key=key, members=members, source=source)


class _RowSource:
    """Rows held in memory, split across streams by index and reshuffled every pass."""

    name: str

    def __len__(self) -> int:
        raise NotImplementedError

    def record(self, index: int) -> RawSample:
        raise NotImplementedError

    def num_samples(self) -> int:
        return len(self)

    def scan(self) -> Iterator[RawSample]:
        """Every record once, in manifest order (for writing shards and for tests)."""
        return (self.record(i) for i in range(len(self)))

    def iter_raw(self, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[RawSample]:
        if not 0 <= stream < num_streams:
            raise ValueError(f"stream {stream} is not in 0..{num_streams - 1}")
        n = len(self)
        if n == 0:
            raise ValueError(f"source {self.name!r} has no samples")
        for pass_index in range(1 << 62):
            order = list(range(stream, n, num_streams)) or list(range(n))
            random.Random(stable_seed(seed, epoch, stream, pass_index, self.name)).shuffle(order)
            for index in order:
                yield self.record(index)


def _resolve(root: str, value: str) -> str:
    return storage.join(root, value)


class CsvSource(_RowSource):
    """Rows of a CSV (or TSV) manifest: an image path column and a caption column.

    Relative image paths are taken from ``root`` (default: the CSV's folder). Other columns go
    to the ``json`` member (for a builder's ``caption_fn``). ``caption_column=None`` reads no
    caption (a ``caption_fn`` must then make one). Keys are row numbers (``"000000042"``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_column: str = "image",
        caption_column: str | None = "caption",
        root: str | os.PathLike[str] | None = None,
        name: str = "csv",
        delimiter: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.name = name
        self.root = os.fspath(root) if root is not None else storage.parent(self.path)
        delimiter = delimiter or ("\t" if self.path.lower().endswith(".tsv") else ",")
        try:
            with storage.open_text(self.path, errors="strict") as f:
                reader = csv_reader(f, delimiter)
                columns = list(reader.fieldnames or [])
                for column in (image_column, caption_column):
                    if column is not None and column not in columns:
                        raise ValueError(
                            f"{self.path}: no column {column!r}; the columns are {columns}"
                        )
                self.rows = [dict(row) for row in reader]
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path} is not UTF-8 text: {e}") from None
        self.image_column = image_column
        self.caption_column = caption_column

    def __len__(self) -> int:
        return len(self.rows)

    def location(self, index: int) -> str | None:
        """The image file of row ``index`` (absolute, or its URL), or None when the row names
        none."""
        image = (self.rows[index].get(self.image_column) or "").strip()
        if not image:
            return None
        location = _resolve(self.root, image)
        return location if storage.is_remote(location) else str(Path(location).resolve())

    def record(self, index: int) -> RawSample:
        row = self.rows[index]
        key = f"{index:09d}"
        image = row.get(self.image_column) or ""
        if not image.strip():
            return error_sample(
                key, "missing-file", self.name, f"row {index} has no {self.image_column!r}"
            )
        caption = row.get(self.caption_column) if self.caption_column is not None else None
        extra = {
            k: v
            for k, v in row.items()
            if k not in (self.image_column, self.caption_column) and k is not None
        }
        return _sample(
            key,
            _resolve(self.root, image.strip()),
            (caption or "") if self.caption_column else None,
            extra,
            self.name,
        )


class FolderSource(_RowSource):
    """Every image under ``root`` (recursively, sorted), captioned by a sidecar ``.txt`` of
    the same stem (``cats/tabby.jpg`` + ``cats/tabby.txt``); a sidecar ``.json`` becomes the
    ``json`` member. An image without a sidecar caption is rejected as ``missing-caption``.
    Keys are the paths relative to ``root``; ``only``: just those of them."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str = "folder",
        extensions: Sequence[str] = IMAGE_EXTS,
        only: Sequence[str] | None = None,
    ) -> None:
        self.root = os.fspath(root)
        if not storage.is_dir(self.root):
            raise ValueError(f"{self.root} is not a folder")
        self.name = name
        wanted = {e.lower().lstrip(".") for e in extensions}
        if only is not None and not storage.is_remote(self.root):
            # a subset (a sync's new and changed files): no walk over the whole tree
            every = [rel for rel in only if os.path.isfile(os.path.join(self.root, rel))]
            for rel in list(every):
                stem = os.path.splitext(rel)[0]
                for ext in ("txt", "json"):
                    if os.path.isfile(os.path.join(self.root, f"{stem}.{ext}")):
                        every.append(f"{stem}.{ext}")
        else:
            every = _find_files(self.root)
        self._all = set(every)
        #: paths relative to root, posix, sorted: the keys
        self.files = sorted(
            rel
            for rel in every
            if os.path.splitext(rel)[1].lower().lstrip(".") in wanted
            and not posixpath.basename(rel).startswith(".")
        )
        if only is not None:  # a subset (a sync's new and changed files)
            keep = set(only)
            self.files = [rel for rel in self.files if rel in keep]

    def __len__(self) -> int:
        return len(self.files)

    def location(self, index: int) -> str | None:
        """The image file of record ``index`` (absolute, or its URL)."""
        location = storage.join(self.root, self.files[index])
        return location if storage.is_remote(location) else str(Path(location).resolve())

    def record(self, index: int) -> RawSample:
        key = self.files[index]
        data = _read_image(key, storage.join(self.root, key), self.name)
        if isinstance(data, RawSample):
            return data
        members = {image_ext(key, data): data}
        stem = os.path.splitext(key)[0]
        for ext in ("txt", "json"):
            sidecar = f"{stem}.{ext}"
            if sidecar in self._all:
                try:
                    members[ext] = storage.read_bytes(storage.join(self.root, sidecar))
                except OSError:
                    continue  # a sidecar that vanished or cannot be read: as if absent
        return RawSample(key=key, members=members, source=self.name)


def _find_files(root: str) -> list[str]:
    """Every file under ``root``, as posix paths relative to it (local or object storage)."""
    if storage.is_remote(root):
        fs, base = storage.fs_and_path(root)
        base = base.rstrip("/")
        return [name[len(base) + 1 :] for name in fs.find(base) if name.startswith(base + "/")]
    out = []
    for folder, dirs, files in os.walk(root):  # scandir underneath: no stat per file
        dirs.sort()
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + name for name in files)
    return out


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "ParquetSource needs pyarrow: pip install 'cliplab[parquet]' (or pip install pyarrow)"
        ) from e
    return pq


class ParquetSource:
    """Rows of Parquet files (one file, or every ``*.parquet`` in a folder, sorted).

    The image column holds a path (string, relative to ``root``, default the file's folder),
    the image bytes (binary), or a Hugging Face ``Image`` struct (``{"bytes", "path"}``).
    Row groups are the units split across streams, like tar shards. Needs ``pyarrow``
    (the ``parquet`` extra).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_column: str = "image",
        caption_column: str | None = "caption",
        root: str | os.PathLike[str] | None = None,
        name: str = "parquet",
    ) -> None:
        pq = _pyarrow_parquet()
        self.path = os.fspath(path)
        folder = storage.is_dir(self.path)
        self.files = storage.list_files(self.path, ".parquet") if folder else [self.path]
        if not self.files:
            raise ValueError(f"no .parquet files in {self.path}")
        self.root = (
            os.fspath(root)
            if root is not None
            else (self.path if folder else storage.parent(self.path))
        )
        self.name = name
        self.image_column = image_column
        self.caption_column = caption_column
        # units: (file, row group, first global row); the global row number is the key
        self.units: list[tuple[str, int, int]] = []
        total = 0
        for file in self.files:
            with storage.open_binary(file) as f:
                meta = pq.ParquetFile(f)
                columns = meta.schema_arrow.names
                for column in (image_column, caption_column):
                    if column is not None and column not in columns:
                        raise ValueError(f"{file}: no column {column!r}; the columns are {columns}")
                for group in range(meta.num_row_groups):
                    self.units.append((file, group, total))
                    total += meta.metadata.row_group(group).num_rows
        self._num_samples = total

    def num_samples(self) -> int:
        return self._num_samples

    def records(self, unit: tuple[str, int, int]) -> Iterator[RawSample]:
        """The records of one row group, in order."""
        pq = _pyarrow_parquet()
        file, group, first = unit
        columns = [self.image_column] + ([self.caption_column] if self.caption_column else [])
        with storage.open_binary(file) as f:
            rows = pq.ParquetFile(f).read_row_group(group).to_pylist()
        for i, row in enumerate(rows):
            key = f"{first + i:09d}"
            value = row.get(self.image_column)
            if isinstance(value, dict):  # Hugging Face Image feature
                value = value.get("bytes") or value.get("path")
            caption = row.get(self.caption_column) if self.caption_column else None
            extra = {k: v for k, v in row.items() if k not in columns and not isinstance(v, bytes)}
            if isinstance(value, bytes):
                image: str | bytes = value
            elif isinstance(value, str) and value.strip():
                image = _resolve(self.root, value.strip())
            else:
                yield error_sample(key, "missing-file", self.name, f"row {first + i} has no image")
                continue
            if caption is not None and not isinstance(caption, str):
                caption = str(caption)
            yield _sample(
                key, image, (caption or "") if self.caption_column else None, extra, self.name
            )

    def scan(self) -> Iterator[RawSample]:
        """Every record once, in file and row order."""
        for unit in self.units:
            yield from self.records(unit)

    def iter_raw(self, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[RawSample]:
        units, stride, offset = stream_share(len(self.units), stream, num_streams)
        return iter_units(
            self.units, units, stride, offset, self.records, self.name, seed, epoch, stream
        )
