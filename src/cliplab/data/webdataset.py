"""WebDataset tar shards, reading: expand their names, stream their samples, read one sample's
members back by key (:class:`ShardIndex`), count them, survey them. Writing is
:mod:`cliplab.data.shardwriter`.

Why one module of ~560 lines: every reader of a shard here applies the same key rule
(:func:`split_key`) and goes through :mod:`cliplab.data.storage`; a sample streamed for
training and the same sample read back by key for a search hit must agree on what its key
and its members are.

A shard is a plain tar whose members are grouped into samples by key, the way ``webdataset``
does: the key is the member path up to the first dot of its basename, the rest is the
extension (``photos/000123.jpg`` -> key ``photos/000123``, ext ``jpg``; ``a.seg.png`` -> ext
``seg.png``), and consecutive members with the same key form one sample.

Reading never raises on bad data inside a shard. Whatever cannot form a sample becomes an
*error record* (``decode.error_sample``) that the decoder rejects and the loader counts:

- ``malformed-member``: a member whose name has no extension (``README``, ``.hidden``), or
  that is not a regular file (link, device); directories are ignored, as tar tools do;
- ``duplicate-key``: the same key and extension twice in a row (the whole sample is dropped:
  which copy is right cannot be known); non-consecutive repeats are separate samples;
- ``truncated-tar``: the shard ends inside a member or a header, or without the end-of-archive
  blocks; the sample being read at that point is dropped, once per read of the shard;
- ``unreadable-shard``: the shard is missing, empty, or not a tar at all.

Counting ``num_samples()`` prefers the stats JSON written beside each shard (ours:
``shard-000000.json`` with ``"samples"``; img2dataset's: ``00000_stats.json`` with
``"successes"``) and otherwise scans the tar headers (no member data is read).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import statistics
import tarfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from cliplab.data import storage
from cliplab.data.decode import ERROR_MEMBER, ImageDecoder, error_sample, image_member
from cliplab.data.images import probe_image
from cliplab.data.stream import BadSample, RawSample, stable_seed

__all__ = [
    "SHARD_SUFFIXES",
    "ShardIndex",
    "WebDatasetSource",
    "expand_urls",
    "is_shard",
    "iter_tar_records",
    "iter_units",
    "shard_stats",
    "shard_stats_path",
    "split_key",
    "stream_share",
]

# --------------------------------------------------------------------------- brace expansion

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced '{{' in shard pattern {text!r}")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _expand_one(pattern: str, whole: str) -> list[str]:
    open_at = pattern.find("{")
    close_at = pattern.find("}")
    if open_at < 0:
        if close_at >= 0:
            raise ValueError(f"unbalanced '}}' in shard pattern {whole!r}")
        return [pattern]
    if 0 <= close_at < open_at:
        raise ValueError(f"unbalanced '}}' in shard pattern {whole!r}")
    end = _matching_brace(pattern, open_at)
    head, body, tail = pattern[:open_at], pattern[open_at + 1 : end], pattern[end + 1 :]
    if not body:
        raise ValueError(f"empty braces '{{}}' in shard pattern {whole!r}")
    match = _RANGE.match(body)
    if match:
        a, b = match.group(1), match.group(2)
        lo, hi = int(a), int(b)
        # zero padding as in bash/braceexpand: "{00000..00099}" keeps 5 digits
        padded = (len(a) > 1 and a.lstrip("-").startswith("0")) or (
            len(b) > 1 and b.lstrip("-").startswith("0")
        )
        width = max(len(a), len(b)) if padded else 0
        step = 1 if hi >= lo else -1
        choices = [str(i).zfill(width) if width else str(i) for i in range(lo, hi + step, step)]
    elif "," in body or "{" in body:
        choices = [c for part in _split_top_level(body) for c in _expand_one(part, whole)]
    elif ".." in body:
        raise ValueError(
            f"malformed range {{{body}}} in shard pattern {whole!r}; expected {{START..END}} with integers"
        )
    else:
        raise ValueError(
            f"braces {{{body}}} hold neither a range nor a comma list in shard pattern {whole!r}"
        )
    rests = _expand_one(tail, whole)
    return [head + c + r for c in choices for r in rests]


def expand_urls(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Shard paths from brace patterns, as webdataset and img2dataset write them.

    ``"data/{00000..00002}.tar"`` -> ``data/00000.tar``, ``data/00001.tar``, ``data/00002.tar``
    (zero padding kept); ``"{a,b}/{0..1}.tar"`` -> 4 paths; ``"x.tar::y.tar"`` and a list of
    patterns concatenate. Malformed braces raise ``ValueError``.
    """
    patterns = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for pattern in patterns:
        for part in os.fspath(pattern).split("::"):
            if part.strip():
                out.extend(_expand_one(part.strip(), os.fspath(pattern)))
    if not out:
        raise ValueError(f"no shards in {urls!r}")
    return out


# --------------------------------------------------------------------------- keys


def split_key(path: str) -> tuple[str, str] | None:
    """``"dir/000123.jpg"`` -> ``("dir/000123", "jpg")`` (extension lower-cased); None when
    the basename has no extension or starts with a dot (webdataset skips those)."""
    directory, _, base = path.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot or not ext:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def stream_share(num_units: int, stream: int, num_streams: int) -> tuple[list[int], int, int]:
    """How stream ``stream`` of ``num_streams`` shares ``num_units`` shards (or row groups):
    ``(units, stride, offset)``: it reads ``units`` and keeps records ``i`` (counted within each
    unit) with ``i % stride == offset``. With at least as many units as streams, units are dealt
    round-robin (stride 1); with fewer, each unit is shared by the streams ``s`` with
    ``s % num_units == unit``, which stride its records: disjoint and complete either way."""
    if not 0 <= stream < num_streams:
        raise ValueError(f"stream {stream} is not in 0..{num_streams - 1}")
    if num_units >= num_streams:
        return list(range(stream, num_units, num_streams)), 1, 0
    unit = stream % num_units
    return [unit], len(range(unit, num_streams, num_units)), stream // num_units


# --------------------------------------------------------------------------- reading


class _LastRead(io.RawIOBase):
    """A file wrapper that remembers the last block read: after tarfile stops, it tells a
    clean end (a zero block) from a truncated or garbled shard (tarfile ends silently)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.last = b"\0" * tarfile.BLOCKSIZE

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.last = data
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.raw.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


_COMPRESSED = (".gz", ".tgz", ".bz2", ".xz")
#: Names of tar shards (plain or compressed).
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_shard(path: str) -> bool:
    """Whether ``path`` names a tar shard (or a ``pipe:`` command that streams one) rather
    than a single file."""
    return path.startswith("pipe:") or path.lower().endswith(SHARD_SUFFIXES)


def iter_tar_records(url: str, source: str = "") -> Iterator[RawSample]:
    """Every record of one shard in order: samples, and error records for what is malformed."""
    try:
        raw = storage.open_binary(url)
    except (OSError, ImportError) as e:
        yield error_sample(url, "unreadable-shard", source, str(e))
        return
    streaming = url.startswith("pipe:") or url.endswith(_COMPRESSED)
    wrapped = _LastRead(raw)
    try:
        try:
            tar = tarfile.open(fileobj=wrapped, mode="r|*" if streaming else "r:")  # noqa: SIM115
        except (tarfile.TarError, OSError, EOFError) as e:
            yield error_sample(url, "unreadable-shard", source, str(e))
            return
        yield from _group_members(tar, wrapped, url, source, check_end=not streaming)
    finally:
        raw.close()


def _group_members(
    tar: tarfile.TarFile, wrapped: _LastRead, url: str, source: str, check_end: bool
) -> Iterator[RawSample]:
    key: str | None = None
    members: dict[str, bytes] = {}
    duplicate = False

    def flush() -> Iterator[RawSample]:
        if key is not None:
            if duplicate:
                yield error_sample(key, "duplicate-key", source, url)
            else:
                yield RawSample(key=key, members=dict(members), source=source)

    try:
        for info in tar:
            tar.members = []  # tarfile keeps every header it read; a shard can hold 30k (as webdataset)
            if info.isdir():
                continue
            parts = split_key(info.name)
            if not info.isfile() or parts is None:
                yield from flush()
                key, members, duplicate = None, {}, False
                yield error_sample(info.name, "malformed-member", source, url)
                continue
            member_key, ext = parts
            if member_key != key:
                yield from flush()
                key, members, duplicate = member_key, {}, False
            file = tar.extractfile(info)
            data = file.read() if file is not None else b""
            if ext in members:
                duplicate = True
            members[ext] = data
    except (tarfile.TarError, OSError, EOFError) as e:
        # the data ended inside a member (or a compressed stream broke): drop what was pending
        yield error_sample(key or url, "truncated-tar", source, f"{url}: {e}")
        return
    if check_end and (len(wrapped.last) < tarfile.BLOCKSIZE or wrapped.last.strip(b"\0")):
        # tarfile stops silently on a partial or garbled header, or at EOF without end blocks
        yield error_sample(key or url, "truncated-tar", source, f"{url}: no end-of-archive marker")
        return
    yield from flush()


def shard_stats_path(url: str) -> str | None:
    """The stats JSON beside a shard (ours ``NAME.json``, img2dataset's ``NAME_stats.json``),
    local or in object storage; None for a ``pipe:`` shard or when there is none."""
    if url.startswith("pipe:"):
        return None
    for suffix in SHARD_SUFFIXES:
        if url.endswith(suffix):
            stem = url[: -len(suffix)]
            break
    else:
        stem = os.path.splitext(url)[0]
    for candidate in (stem + ".json", stem + "_stats.json"):
        try:
            if storage.is_file(candidate):
                return candidate
        except (OSError, ImportError):
            return None
    return None


def _count_from_stats(url: str) -> int | None:
    path = shard_stats_path(url)
    if path is None:
        return None
    try:
        stats = json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return None
    for field in ("samples", "successes"):
        if isinstance(stats, dict) and isinstance(stats.get(field), int):
            return stats[field]
    return None


def _count_by_scan(url: str) -> int:
    """Samples in a shard from its headers alone (member data is skipped, not read)."""
    count, last = 0, None
    try:
        with storage.open_binary(url) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            for info in tar:
                tar.members = []
                parts = split_key(info.name) if info.isfile() else None
                if parts is not None and parts[0] != last:
                    count += 1
                last = parts[0] if parts else None
    except (tarfile.TarError, OSError, EOFError, ImportError):
        pass  # a broken shard counts what could be read; reading it reports the rest
    return count


# --------------------------------------------------------------------------- members by key


def _table_of_contents(url: str) -> dict[str, dict[str, tuple[int, int]]]:
    """``key -> {ext: (data offset, size)}`` from an uncompressed shard's headers (member data
    is skipped, not read). Keys and extensions as :func:`iter_tar_records` groups them; a key
    that comes back later in the shard keeps its first sample. A truncated shard lists the
    members before the break."""
    table: dict[str, dict[str, tuple[int, int]]] = {}
    last: str | None = None
    listing = False
    try:
        with storage.open_binary(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                tar.members = []
                if info.isdir():
                    continue
                parts = split_key(info.name) if info.isfile() else None
                if parts is None:  # a malformed member ends the sample, as when reading
                    last = None
                    continue
                key, ext = parts
                if key != last:
                    last, listing = key, key not in table
                    if listing:
                        table[key] = {}
                if listing:
                    table[key].setdefault(ext, (info.offset_data, info.size))
    except (tarfile.TarError, EOFError) as e:
        if not table:
            raise OSError(f"{url}: not a readable tar shard ({e})") from None
    return table


class ShardIndex:
    """Members of tar shards read back by sample key (what a search hit or an embedded
    collection records: the shard and the key).

    Each shard's table of contents (key -> extension -> byte offset and size, keys as
    :func:`split_key` makes them) is built once from its headers and kept for the ``size``
    shards used last; a member is then one byte-range read through
    :func:`cliplab.data.storage.read_range`, so shards in object storage (``s3://``...) work
    like local ones. Compressed shards have no byte offsets: they are read through until the
    key. Safe to share between threads.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._tables: OrderedDict[str, dict[str, dict[str, tuple[int, int]]]] = OrderedDict()
        self._lock = threading.Lock()

    def table(self, url: str) -> dict[str, dict[str, tuple[int, int]]]:
        """The table of contents of an uncompressed shard (``OSError`` if unreadable)."""
        with self._lock:
            if url in self._tables:
                self._tables.move_to_end(url)
                return self._tables[url]
        table = _table_of_contents(url)  # unlocked: a remote shard takes a while
        with self._lock:
            self._tables[url] = table
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)
        return table

    def read_member(self, url: str, key: str, exts: Sequence[str]) -> tuple[str, bytes] | None:
        """``(ext, data)`` of the first of ``exts`` that sample ``key`` of shard ``url`` holds;
        None when the shard has no such sample or member. ``OSError`` when the shard cannot be
        read, ``ValueError`` for a ``pipe:`` shard (it would run a command)."""
        if url.startswith("pipe:"):
            raise ValueError(f"{url}: members of a pipe: shard cannot be read by key")
        if url.endswith(_COMPRESSED):
            sample = next((r.members for r in iter_tar_records(url) if r.key == key), {})
            ext = next((e for e in exts if e in sample), None)
            return None if ext is None or ERROR_MEMBER in sample else (ext, sample[ext])
        found = self.table(url).get(key, {})
        ext = next((e for e in exts if e in found), None)
        if ext is None:
            return None
        offset, size = found[ext]
        data = storage.read_range(url, offset, size)
        if len(data) != size:
            raise OSError(f"{url}: member {key}.{ext} is cut short ({len(data)} of {size} bytes)")
        return ext, data


class WebDatasetSource:
    """Samples from WebDataset tar shards (a brace pattern, a list of paths, or both).

    Each pass over this stream's shards (see ``stream_share``) visits them in an order
    reshuffled with ``stable_seed(seed, epoch, stream, pass, name)``, members in tar order (the
    loader's shuffle buffer mixes them). ``iter_raw`` only reads bytes: cheap enough to
    fast-forward through on resume.
    """

    def __init__(
        self, urls: str | Sequence[str], name: str = "webdataset", num_samples: int | None = None
    ) -> None:
        self.urls = expand_urls(urls)
        self.name = name
        self._num_samples = num_samples

    def num_samples(self) -> int:
        """Samples in one pass: from the stats JSONs where present, else by scanning headers."""
        if self._num_samples is None:
            total = 0
            for url in self.urls:
                count = _count_from_stats(url)
                if count is None:
                    if url.startswith("pipe:"):
                        raise ValueError(
                            f"cannot count the samples of {url!r} without a stats JSON; pass num_samples="
                        )
                    count = _count_by_scan(url)
                total += count
            self._num_samples = total
        return self._num_samples

    def records(self, url: str) -> Iterator[RawSample]:
        """One shard's records in order (samples and error records)."""
        return iter_tar_records(url, self.name)

    def scan(self) -> Iterator[RawSample]:
        """Every record once, shards in the given order (for writing, stats and tests)."""
        for url in self.urls:
            yield from self.records(url)

    def iter_raw(self, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[RawSample]:
        units, stride, offset = stream_share(len(self.urls), stream, num_streams)
        return iter_units(
            self.urls, units, stride, offset, self.records, self.name, seed, epoch, stream
        )


def iter_units(
    items: Sequence[Any],
    units: list[int],
    stride: int,
    offset: int,
    records: Callable[[Any], Iterator[RawSample]],
    name: str,
    seed: int,
    epoch: int,
    stream: int,
) -> Iterator[RawSample]:
    """Endless passes over ``units`` (reshuffled each pass), keeping every ``stride``-th record.

    A unit-level error record (the first record when a unit cannot be read) is kept by the
    stream with ``offset == 0`` only, so it is counted once. A pass that yields nothing (more
    streams than records) falls back to the whole unit list unsplit; a pass that yields only
    error records means the data is unusable and raises rather than spinning forever.
    """
    for pass_index in range(1 << 62):
        order = list(units)
        random.Random(stable_seed(seed, epoch, stream, pass_index, name)).shuffle(order)
        yielded = good = 0
        for unit in order:
            for i, record in enumerate(records(items[unit])):
                if i % stride == offset:
                    yielded += 1
                    good += ERROR_MEMBER not in record.members
                    yield record
        if yielded == 0:
            if stride == 1 and units == list(range(len(items))):
                raise ValueError(f"source {name!r} has no samples")
            units, stride, offset = list(range(len(items))), 1, 0
        elif good == 0:
            raise ValueError(
                f"source {name!r}: every record of stream {stream}'s share is malformed ({yielded} bad records)"
            )


# --------------------------------------------------------------------------- survey


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "mean": round(statistics.fmean(ordered), 2),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def shard_stats(
    source: WebDatasetSource, decode: bool = False, limit: int | None = None
) -> dict[str, Any]:
    """A survey of shards (``cliplab data stats``): what their writers recorded, records read,
    bad samples by reason, image formats, caption and image sizes (from the image headers,
    or from decoding every image with ``decode``)."""
    decoder = ImageDecoder()
    writer_samples, writer_failures, with_stats = 0, Counter(), 0
    for url in source.urls:
        path = shard_stats_path(url)
        if path is None:
            continue
        try:
            stats = json.loads(storage.read_text(path))
        except (OSError, ValueError):
            continue
        with_stats += 1
        writer_samples += int(stats.get("samples", stats.get("successes", 0)))
        writer_failures.update(stats.get("failures", {}))
    bad: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    chars, words, widths, heights = [], [], [], []
    records = 0
    for records, sample in enumerate(source.scan(), start=1):
        rng = random.Random(0)
        try:
            caption = decoder.caption(sample, rng)
            ext = image_member(sample.members)
            if ext is None:
                raise BadSample("no-image")
            if decode:
                image, _ = decoder(sample, rng)
                fmt, width, height = probe_image(sample.members[ext])[0], *image.size
            else:
                fmt, width, height = probe_image(sample.members[ext])
        except BadSample as e:
            bad[e.reason] += 1
        else:
            formats[fmt] += 1
            chars.append(len(caption))
            words.append(len(caption.split()))
            widths.append(width)
            heights.append(height)
        if limit is not None and records >= limit:
            break
    return {
        "shards": len(source.urls),
        "shards_with_stats": with_stats,
        "written": {"samples": writer_samples, "failures": dict(sorted(writer_failures.items()))},
        "records": records,
        "ok": len(chars),
        "bad": dict(sorted(bad.items())),
        "formats": dict(formats.most_common()),
        "caption_chars": _summary(chars),
        "caption_words": _summary(words),
        "image_width": _summary(widths),
        "image_height": _summary(heights),
        "checked": "decoded" if decode else "headers",
    }
