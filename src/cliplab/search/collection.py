"""An embedded collection on disk (what ``cliplab embed`` writes), and reading it back.

Layout of a collection directory::

    embed.json             the model (its spec and fingerprint), the source, dim, dtype, counts
    images/000000.npy      (n, D) L2-normalised image embeddings of part 0 (float16 by default)
    texts/000000.npy       (n, D) caption embeddings, rows aligned with images (zeros where an
                           image has no caption), when captions were embedded
    meta/000000.parquet    id, key, path, caption, width, height of each embedded image
                           (path: the image file, or for shard sources the shard, the key
                           naming the sample in it; local paths or URLs), and what its EXIF
                           says (:mod:`cliplab.data.exif`: taken, lat, lon, make, model,
                           orientation), its size in bytes and its file's mtime (parts
                           written before these columns existed read them as null)
    parts/000000.json      written last: the part is complete (records read, images, failures)
    failures.jsonl         key and reason of every record that could not be embedded
    index/                 what ``cliplab index`` builds (see :mod:`cliplab.search.index`)
    state.json             a folder collection kept in step (:mod:`cliplab.search.sync`): the
                           generation, how many parts it holds, its tombstones
                           (``sync/deleted-G.npy``: ids of deleted or replaced images) and
                           its file list (``sync/files-G.parquet``: path, size, mtime, hash, id)

Ids are row numbers across parts, in source order. Every file is written atomically and a
part counts only once its ``parts/*.json`` exists, so a killed run leaves complete parts
only and resumes after them. Where ``state.json`` exists it is the snapshot a reader sees:
read once when the collection is opened, it names the parts (later ones are a sync still
writing) and the tombstones, so a reader sees the collection before a sync or after it,
never a mix.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cliplab.data import storage
from cliplab.data.images import IMAGE_EXTS
from cliplab.data.webdataset import ShardIndex, is_shard

__all__ = [
    "FORMAT",
    "META_COLUMNS",
    "PHOTO_COLUMNS",
    "STATE_FILE",
    "Collection",
    "Part",
    "meta_schema",
]

FORMAT = "cliplab-embeddings"
VERSION = 1
#: Metadata columns of every part.
META_COLUMNS = ("id", "key", "path", "caption", "width", "height")
#: A photo's columns (EXIF and file), from collections written since they were added.
PHOTO_COLUMNS = ("taken", "lat", "lon", "make", "model", "orientation", "bytes", "mtime")


def meta_schema() -> Any:
    """The pyarrow schema of a part's metadata table."""
    pa = _pyarrow()
    return pa.schema(
        [
            ("id", pa.int64()), ("key", pa.string()), ("path", pa.string()),
            ("caption", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
            ("taken", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()),
            ("make", pa.string()), ("model", pa.string()), ("orientation", pa.int8()),
            ("bytes", pa.int64()), ("mtime", pa.float64()),
        ]
    )  # fmt: skip


#: The snapshot a synced collection's readers see (see the module docstring).
STATE_FILE = "state.json"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "embedding collections need pyarrow: pip install 'cliplab[search]'"
        ) from e
    return pyarrow


def _conform(table: Any, schema: Any) -> Any:
    """``table`` with ``schema``'s columns in its order (missing ones null)."""
    pa = _pyarrow()
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class Part:
    """One complete part: its number and what its record says."""

    number: int
    records: int  # source records consumed (embedded + failed)
    images: int  # rows of images/NNNNNN.npy
    failures: dict[str, int]

    @property
    def stem(self) -> str:
        return f"{self.number:06d}"


class Collection:
    """A collection directory, read-only: its info, parts, embeddings and metadata."""

    def __init__(self, path: str | os.PathLike[str], state: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        info_file = self.path / "embed.json"
        if not info_file.is_file():
            raise FileNotFoundError(
                f"{self.path} is not an embedded collection (no embed.json): run `cliplab embed`"
            )
        try:
            self.info: dict[str, Any] = json.loads(info_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{info_file}: unreadable ({e})") from None
        if self.info.get("format") != FORMAT:
            raise ValueError(f"{info_file}: not a {FORMAT} file")
        #: the snapshot (None: a collection never synced, every complete part counts);
        #: ``state`` given: a writer's view of the snapshot it is about to commit
        self.state: dict[str, Any] | None = state
        if state is None and (self.path / STATE_FILE).is_file():
            self.state = json.loads((self.path / STATE_FILE).read_text(encoding="utf-8"))

    @property
    def generation(self) -> int:
        """The sync generation this reader sees (0: never synced)."""
        return int(self.state["generation"]) if self.state else 0

    @cached_property
    def deleted(self) -> np.ndarray:
        """Sorted ids of images deleted or replaced by a sync (tombstones): never returned."""
        name = (self.state or {}).get("deleted")
        if not name:
            return np.zeros(0, dtype=np.int64)
        return np.load(self.path / name).astype(np.int64)

    def is_deleted(self, index: int) -> bool:
        """Whether id ``index`` is a tombstone."""
        j = int(np.searchsorted(self.deleted, index))
        return j < len(self.deleted) and int(self.deleted[j]) == index

    def alive(self) -> np.ndarray:
        """(N,) bool: which ids are live images (not tombstones)."""
        mask = np.ones(len(self), dtype=bool)
        mask[self.deleted[self.deleted < len(self)]] = False
        return mask

    @property
    def live(self) -> int:
        """Images a search can return: rows minus tombstones."""
        return len(self) - len(self.deleted)

    @property
    def fingerprint(self) -> str:
        return str(self.info["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def has_texts(self) -> bool:
        return bool(self.info.get("captions"))

    @cached_property
    def parts(self) -> list[Part]:
        """The complete parts, in order (a part without its record is not complete)."""
        parts = []
        files = sorted((self.path / "parts").glob("*.json"))
        if self.state is not None:
            files = files[: int(self.state["parts"])]  # later ones: a sync still writing
        for file in files:
            record = json.loads(file.read_text(encoding="utf-8"))
            parts.append(
                Part(int(file.stem), record["records"], record["images"], record["failures"])
            )
        for expected, part in enumerate(parts):
            if part.number != expected:
                raise ValueError(f"{self.path}: part {expected:06d} is missing")
        return parts

    def __len__(self) -> int:
        return sum(p.images for p in self.parts)

    @property
    def records(self) -> int:
        """Source records read so far (embedded or failed)."""
        return sum(p.records for p in self.parts)

    def failures(self) -> Counter[str]:
        return sum((Counter(p.failures) for p in self.parts), Counter())

    def _stack(self, kind: str, parts: list[Part] | None = None) -> np.ndarray:
        arrays = [
            np.load(self.path / kind / f"{p.stem}.npy", mmap_mode="r")
            for p in (self.parts if parts is None else parts)
            if p.images
        ]
        if not arrays:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(arrays).astype(np.float32)

    def image_embeddings(self, start: int = 0) -> np.ndarray:
        """(N - start, D) float32, unit rows: the image embeddings from id ``start`` on."""
        out = self._stack("images")
        return out[start:]

    def text_embeddings(self) -> np.ndarray:
        """(N, D) float32 caption embeddings aligned with the images (zero rows: no caption)."""
        if not self.has_texts:
            raise ValueError(f"{self.path}: no captions were embedded")
        return self._stack("texts")

    @cached_property
    def metadata(self) -> Any:
        """All parts' metadata as one pyarrow Table (row i is id i)."""
        pa = _pyarrow()
        tables = [
            pa.parquet.read_table(self.path / "meta" / f"{p.stem}.parquet")
            for p in self.parts
            if p.images
        ]
        schema = meta_schema()
        if not tables:
            return schema.empty_table()
        # parts from before the photo columns: theirs read as null
        return pa.concat_tables([_conform(t, schema) for t in tables])

    def row(self, index: int) -> dict[str, Any]:
        """The metadata of id ``index`` (``IndexError`` outside the collection)."""
        if not 0 <= index < len(self):
            raise IndexError(f"no image with id {index} (the collection has {len(self)})")
        return self.metadata.slice(index, 1).to_pylist()[0]

    def rows(self, indices: list[int]) -> list[dict[str, Any]]:
        table = self.metadata.take(indices)
        return table.to_pylist()

    def image_bytes(self, index: int) -> bytes | None:
        """The bytes of image ``index`` as its source holds them: the file the row records, or
        its member of the shard the row records (read by key and byte range), local or in
        object storage alike (:mod:`cliplab.data.storage`). None when the row records no
        location or the file or member is gone or unreadable; ``IndexError`` outside the
        collection. Only the collection's own records are read: no caller-given path."""
        row = self.row(index)
        path = row.get("path")
        if not path:
            return None
        try:
            if is_shard(path):  # a shard and key (a collection may mix shards and files)
                found = self._shards.read_member(path, row["key"], IMAGE_EXTS)
                return None if found is None else found[1]
            return storage.read_bytes(path)
        except (OSError, ImportError, ValueError):
            return None

    @cached_property
    def _shards(self) -> ShardIndex:
        return ShardIndex()
