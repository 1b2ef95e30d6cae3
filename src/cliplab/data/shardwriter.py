"""WebDataset tar shards, writing: :class:`ShardWriter` and :func:`write_shards`.

Shards come out as :mod:`cliplab.data.webdataset` reads them (and as ``webdataset`` and
img2dataset expect): samples grouped by key, a stats JSON beside each shard with the samples
written and the failures by reason. Every shard and stats file is put in place atomically.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cliplab.data.decode import ERROR_MEMBER, ImageDecoder, image_member
from cliplab.data.stream import BadSample, Source, scan
from cliplab.fileio import AtomicFile, write_json

__all__ = ["ShardWriter", "write_shards"]


def _check_key(key: str) -> None:
    if (
        not isinstance(key, str)
        or not key
        or "/" in key
        or "." in key
        or "\0" in key
        or "\\" in key
    ):
        raise ValueError(
            f"bad sample key {key!r}: keys must be non-empty, without '/', '.', '\\\\' or NUL"
        )


def _member_bytes(ext: str, value: bytes | str | Any) -> bytes:
    if not isinstance(ext, str) or not ext or "/" in ext or ext.startswith(".") or "\0" in ext:
        raise ValueError(f"bad member extension {ext!r}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if ext.endswith("json") and isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
    raise TypeError(
        f"member {ext!r} must be bytes or str (or a dict/list for json), got {type(value).__name__}"
    )


class ShardWriter:
    """Writes samples into ``prefix-000000.tar``, ``prefix-000001.tar``, ... in ``directory``,
    each with a ``prefix-000000.json`` stats file: samples written, failures by reason.

    A shard closes after ``max_samples`` samples or before it would exceed ``max_bytes``. Each
    tar is written under a temporary name and renamed when complete, so a crash never leaves a
    truncated shard behind. Members are stored with fixed metadata (mtime 0, root owner), so
    the same input gives byte-identical shards. Callers report samples they could not use
    with ``fail(reason)``; the count goes to the stats of the shard being written.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        prefix: str = "shard",
        max_samples: int = 10000,
        max_bytes: int | None = None,
        first_index: int = 0,
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if not prefix or "/" in prefix:
            raise ValueError(f"bad shard prefix {prefix!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.first_index = first_index  # the number in the first shard's name
        self.shards: list[Path] = []
        self.samples = 0
        self.bytes = 0
        self.failures: Counter[str] = Counter()
        self._tar: tarfile.TarFile | None = None
        self._tmp: AtomicFile | None = None
        self._shard_samples = 0
        self._shard_bytes = 0
        self._shard_failures: Counter[str] = Counter()
        self._last_key: str | None = None
        self._closed = False
        self._extra: Mapping[str, Any] | None = None

    def _shard_path(self, index: int) -> Path:
        return self.directory / f"{self.prefix}-{self.first_index + index:06d}.tar"

    def _open(self) -> None:
        self._tmp = AtomicFile(self._shard_path(len(self.shards)))
        self._tar = tarfile.open(self._tmp.tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._shard_samples = self._shard_bytes = 0

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        final = self._tmp.commit()
        self.shards.append(final)
        size = final.stat().st_size
        self.bytes += size
        self._write_stats(
            len(self.shards) - 1, self._shard_samples, size, self._shard_failures, self._extra
        )
        self._tar, self._tmp = None, None
        self._shard_failures = Counter()
        self._last_key = None

    def _write_stats(
        self,
        index: int,
        samples: int,
        size: int,
        failures: Mapping[str, int],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        path = self._shard_path(index).with_suffix(".json")
        stats = {
            **(extra or {}),
            "shard": self._shard_path(index).name,
            "samples": samples,
            "bytes": size,
            "failures": dict(sorted(failures.items())),
            "failed": sum(failures.values()),
        }
        write_json(path, stats)

    def write(self, key: str, members: Mapping[str, bytes | str]) -> None:
        """Add one sample: ``members`` maps extensions (``"jpg"``, ``"txt"``, ``"json"``) to
        bytes or text. ``key`` must be non-empty with no '/' or '.' (``ValueError``)."""
        if self._closed:
            raise ValueError("ShardWriter is closed")
        _check_key(key)
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        data = {ext: _member_bytes(ext, value) for ext, value in members.items()}
        # a header block per member, data padded to whole blocks (long names add pax headers)
        block = tarfile.BLOCKSIZE
        size = sum(block + -(-len(v) // block) * block for v in data.values())
        if key == self._last_key:
            raise ValueError(
                f"sample key {key!r} written twice in a row: readers would merge the two samples"
            )
        if self._tar is not None and (
            self._shard_samples >= self.max_samples
            or (self.max_bytes is not None and self._shard_bytes + size > self.max_bytes)
        ):
            self._finish_shard()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for ext, value in data.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(value)
            info.mtime = 0
            info.mode = 0o444
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(value))
        self._last_key = key
        self._shard_samples += 1
        self._shard_bytes += size
        self.samples += 1

    def fail(self, reason: str, count: int = 1) -> None:
        """Record ``count`` samples that could not be written, by reason ("not-an-image")."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._shard_failures[reason] += count
        self.failures[reason] += count

    def close(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Finish the last shard; returns a summary: shards, samples, bytes, failures by reason.

        Failures reported after the last sample go to the last shard's stats (an empty shard
        is written when no sample was written at all, so the counts are never lost).
        ``extra`` fields are added to the last shard's stats (a downloader's timings).
        """
        self._extra = extra
        if not self._closed:
            self._closed = True
            if self._tar is not None:
                self._finish_shard()
            elif self._shard_failures:
                if self.shards:
                    index = len(self.shards) - 1
                    stats = json.loads(self._shard_path(index).with_suffix(".json").read_text())
                    merged = Counter(stats.get("failures", {})) + self._shard_failures
                    self._write_stats(index, stats["samples"], stats["bytes"], merged, extra)
                    self._shard_failures = Counter()
                else:
                    self._open()
                    self._finish_shard()
        return {
            "directory": str(self.directory),
            "shards": [str(p) for p in self.shards],
            "samples": self.samples,
            "bytes": self.bytes,
            "failures": dict(sorted(self.failures.items())),
            "failed": sum(self.failures.values()),
        }

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); shards already finished stay."""
        if self._tar is not None and self._tmp is not None:
            self._tar.close()
            self._tmp.discard()
            self._tar = self._tmp = None
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _with_source_key(members: dict[str, bytes], key: str) -> dict[str, bytes]:
    """Keep where a sample came from in its json member (added, or merged into a dict)."""
    meta: Any = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError:
            return members
        if not isinstance(meta, dict):
            return members
    meta.setdefault("source_key", key)
    return {**members, "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}


def _encode(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write_shards(
    source: Source,
    writer: ShardWriter,
    *,
    validate: bool = True,
    resize: int | None = None,
    quality: int = 95,
    decoder: ImageDecoder | None = None,
) -> dict[str, Any]:
    """Copy every record of ``source`` into ``writer`` (``cliplab data write``).

    Bad samples are counted with ``writer.fail(reason)``, never written; keys become running
    numbers (``"000000042"``) and the source key is kept in the json member. ``validate``
    decodes every image first; ``resize`` re-encodes images as JPEG with the shorter side at
    most that many pixels. Returns the writer's summary.
    """
    decoder = decoder or ImageDecoder(resize)
    own_decode = getattr(source, "decode", None)
    for index, sample in enumerate(scan(source)):
        members = dict(sample.members)
        try:
            if callable(own_decode):  # a generated source: encode what it draws
                image, caption = own_decode(sample, random.Random(index))
                members = {"png": _encode(image, "PNG"), "txt": caption.encode("utf-8")}
            elif ERROR_MEMBER in members:
                decoder(sample, random.Random(index))  # raises BadSample with the reason
            elif validate or resize is not None:
                image, _ = decoder(sample, random.Random(index))
                if resize is not None:
                    members.pop(image_member(members) or "", None)
                    members["jpg"] = _encode(image, "JPEG", quality=quality)
        except BadSample as e:
            writer.fail(e.reason)
            continue
        writer.write(f"{index:09d}", _with_source_key(members, sample.key))
    return writer.close()
