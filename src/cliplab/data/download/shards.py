"""Rows -> WebDataset shards: worker threads fetch, check, resize and re-encode each image,
a journal keeps every settled row, and a shard is written in row order once all its rows
are settled.

Why a journal: a killed run must download nothing twice. Each settled row (its image and
json, or its failure reason) is appended to ``<shard>.journal`` as it finishes; a resumed
run reads the journal back (a record cut short by the kill is dropped) and fetches only the
rows it lacks. The tar is then written from the journal in row order, so an interrupted and
resumed run writes the same bytes as an uninterrupted one, and the journal is deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from cliplab.data import storage
from cliplab.data.download.hosts import HostScheduler, Item
from cliplab.data.download.http import Failure, HttpClient, agent_token, host_of, opted_out
from cliplab.data.images import decode_image, probe_image
from cliplab.data.shardwriter import ShardWriter
from cliplab.data.stream import BadSample

__all__ = ["RESIZE_MODES", "ImageOptions", "Journal", "ShardDownloader", "shard_name"]

RESIZE_MODES = ("keep-ratio", "center-crop", "border", "no")
ENCODINGS = {"jpg": "JPEG", "webp": "WEBP"}
_HEADER = struct.Struct("<I")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def staging(out: str) -> Path:
    """Where shards are written before they are in ``out``: ``out`` itself when it is a
    local folder; for object storage, a folder in cliplab's cache (journals live there, so
    a run resumed on the same machine continues its part-done shards)."""
    if not storage.is_remote(out):
        return Path(out)
    from cliplab.checkpoints.fetch import cache_root

    digest = hashlib.sha1(out.rstrip("/").encode()).hexdigest()[:16]
    return cache_root() / "download" / digest


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class ImageOptions:
    """How a downloaded image is checked and stored. Images are only ever made smaller."""

    size: int = 256
    mode: str = "keep-ratio"  # keep-ratio: shorter side; border: longer side, padded square
    encoding: str = "jpg"
    quality: int = 95
    max_pixels: int = 89_478_485
    min_size: int = 8

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}: {self.mode!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}: {self.encoding!r}")
        if self.size < 1 or not 1 <= self.quality <= 100:
            raise ValueError(f"bad size {self.size} or quality {self.quality}")

    def process(self, data: bytes) -> tuple[bytes, dict[str, int]]:
        """Downloaded bytes -> encoded image and its sizes, or ``BadSample(reason)``: the
        data layer's checks (not an image, truncated, decompression bomb, too small)."""
        _, width, height = probe_image(data, max_pixels=self.max_pixels, min_size=self.min_size)
        shrink = self.mode in ("keep-ratio", "center-crop")
        image = decode_image(
            data,
            image_size=self.size if shrink else None,
            max_pixels=self.max_pixels,
            min_size=self.min_size,
        )
        if self.mode == "center-crop":
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        elif self.mode == "border":
            if max(image.size) > self.size:
                scale = self.size / max(image.size)
                new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
            side = max(image.size)
            canvas = Image.new("RGB", (side, side), (0, 0, 0))
            canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = canvas
        buffer = io.BytesIO()
        image.save(buffer, ENCODINGS[self.encoding], quality=self.quality)
        sizes = {
            "original_width": width,
            "original_height": height,
            "width": image.width,
            "height": image.height,
        }
        return buffer.getvalue(), sizes


# --------------------------------------------------------------------------- journal
class Journal:
    """Append-only record of a shard's settled rows: a length-prefixed JSON header
    (``row``, ``reason`` or member sizes) followed by the members' bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: Any = None

    def read(self) -> dict[int, tuple[str | None, dict[str, bytes]]]:
        """Every complete record: row -> (failure reason or None, members). A record cut
        short by a kill is cut off the file too, so the records appended next stay whole."""
        out: dict[int, tuple[str | None, dict[str, bytes]]] = {}
        if not self.path.exists():
            return out
        data = self.path.read_bytes()
        pos = good = 0
        while pos + _HEADER.size <= len(data):
            (n,) = _HEADER.unpack_from(data, pos)
            start = pos + _HEADER.size
            if start + n > len(data):
                break
            try:
                head = json.loads(data[start : start + n])
            except ValueError:
                break
            pos = start + n
            members: dict[str, bytes] = {}
            for ext, size in head.get("members", {}).items():
                members[ext] = data[pos : pos + size]
                pos += size
            if pos > len(data):  # cut short by a kill: not settled
                break
            out[int(head["row"])] = (head.get("reason"), members)
            good = pos
        if good < len(data):
            os.truncate(self.path, good)
        return out

    def append(self, row: int, reason: str | None, members: dict[str, bytes]) -> None:
        head = json.dumps(
            {"row": row, "reason": reason, "members": {k: len(v) for k, v in members.items()}}
        ).encode()
        record = b"".join([_HEADER.pack(len(head)), head, *members.values()])
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
            self._file.write(record)  # one write: a kill leaves a whole record or a cut one

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- shards
@dataclass
class _Shard:
    index: int
    rows: int  # rows in the shard
    journal: Journal
    settled: dict[int, tuple[str | None, dict[str, bytes]]]
    remaining: int
    started: float = field(default_factory=time.monotonic)
    received: int = 0


@dataclass
class Politeness:
    """What the run promises hosts (see :class:`cliplab.data.download.DownloadConfig`)."""

    user_agent: str
    opt_out_tags: tuple[str, ...]
    respect_robots: bool
    retries: int
    max_retry_after: float
    backoff: float = 1.0


class ShardDownloader:
    """Downloads shards with ``threads`` worker threads sharing one :class:`HostScheduler`.

    ``add(index, rows)`` queues a shard (rows: (row number, url, caption, extra columns));
    it blocks while more than ``backlog`` rows are unsettled, so memory stays bounded and
    the next shard is fed while the last one's slow rows finish. ``finish()`` waits for all
    of them. ``on_shard(stats)`` is called as each shard is written.
    """

    def __init__(
        self,
        out: str,
        *,
        image: ImageOptions,
        politeness: Politeness,
        client: HttpClient,
        threads: int = 32,
        per_host: int = 8,
        host_rate: float = 0.0,
        backlog: int = 0,
        on_shard: Callable[[dict[str, Any]], None] | None = None,
        on_row: Callable[[str | None], None] | None = None,
    ) -> None:
        self.out, self.image, self.polite, self.client = out, image, politeness, client
        self.stage = staging(out)
        self.stage.mkdir(parents=True, exist_ok=True)
        self.scheduler = HostScheduler(per_host, host_rate)
        self.backlog = backlog or max(4 * threads, 256)
        self.on_shard, self.on_row = on_shard, on_row
        self.agent = agent_token(politeness.user_agent)
        self._shards: dict[int, _Shard] = {}
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._work, name=f"download-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    # -- feeding -------------------------------------------------------------------------
    def add(self, index: int, rows: list[tuple[int, str, str, dict[str, Any]]]) -> None:
        journal = Journal(self.stage / f"{shard_name(index)}.journal")
        mine = {r[0] for r in rows}
        settled = {row: v for row, v in journal.read().items() if row in mine}
        todo = [r for r in rows if r[0] not in settled]
        shard = _Shard(index, len(rows), journal, settled, len(todo))
        with self._lock:
            self._shards[index] = shard
        if not todo:
            self._write(shard)
            return
        for row, url, caption, extra in todo:
            with self._room:
                while self.scheduler.backlog() >= self.backlog and not self._errors:
                    self._room.wait(1.0)
                self._raise()
            self.scheduler.put(Item(index, row, url, host_of(url), caption, extra))

    def finish(self) -> None:
        self.scheduler.close()
        for t in self._threads:
            t.join()
        self.client.close()
        self._raise()

    def _raise(self) -> None:
        if self._errors:
            raise RuntimeError(f"download worker failed: {self._errors[0]!r}") from self._errors[0]

    # -- working -------------------------------------------------------------------------
    def _work(self) -> None:
        while (item := self.scheduler.take()) is not None:
            try:
                outcome = self._fetch(item)
                if outcome is None:  # given back for a retry
                    continue
                self._settle(item, *outcome)
            except BaseException as e:  # a bug or a full disk, not a bad URL: stop loudly
                if not item.finished:
                    self.scheduler.finish(item)  # else take() would wait for it forever
                with self._room:
                    self._errors.append(e)
                    self._room.notify_all()

    def _fetch(self, item: Item) -> tuple[str | None, dict[str, bytes]] | None:
        host = self.scheduler.hosts[item.host]
        try:
            if host.opted_out:
                raise Failure("opt-out-host", host.opted_out)
            if self.polite.respect_robots:
                with host.robots_lock:
                    if host.robots is None:
                        host.robots = self.client.robots(item.url, self.agent)
                if not host.robots.allows(self.agent, item.url):
                    raise Failure("robots")
            response = self.client.get(item.url)
            directive = opted_out(response.headers, self.polite.opt_out_tags, self.agent)
            if directive:
                host.opted_out = directive
                raise Failure("opt-out", directive)
        except Failure as e:
            self.scheduler.release(item)
            item.attempts += 1
            wait = e.retry_after
            if (
                e.retry
                and item.attempts <= self.polite.retries
                and (wait is None or wait <= self.polite.max_retry_after)
            ):
                if wait is not None:
                    self.scheduler.pause(item.host, wait)
                else:
                    wait = self.polite.backoff * 2 ** (item.attempts - 1) * random.uniform(1, 1.5)
                self.scheduler.later(item, wait)
                return None
            return e.reason, {}
        self.scheduler.release(item)
        with self._lock:
            self._shards[item.shard].received += response.received
        try:
            encoded, sizes = self.image.process(response.body)
        except BadSample as e:
            return e.reason, {}
        except Exception:  # noqa: BLE001 - a hostile image must not stop the run: counted
            return "image-error", {}
        meta = {
            **item.extra,
            "url": item.url,
            "caption": item.caption,
            "key": f"{item.row:09d}",
            **sizes,
        }
        return None, {
            self.image.encoding: encoded,
            "txt": item.caption.encode("utf-8"),
            "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        }

    def _settle(self, item: Item, reason: str | None, members: dict[str, bytes]) -> None:
        with self._lock:
            shard = self._shards[item.shard]
        shard.journal.append(item.row, reason, members)
        if self.on_row is not None:
            self.on_row(reason)
        with self._room:
            shard.settled[item.row] = (reason, members)
            shard.remaining -= 1
            done = shard.remaining == 0
            self.scheduler.finish(item)
            item.finished = True
            self._room.notify_all()
        if done:
            try:
                self._write(shard)
            except BaseException as e:
                with self._room:
                    self._errors.append(e)
                    self._room.notify_all()

    def _write(self, shard: _Shard) -> None:
        """All rows settled: the tar in row order, its stats, then the journal goes."""
        shard.journal.close()
        writer = ShardWriter(
            self.stage, prefix="shard", max_samples=shard.rows + 1, first_index=shard.index
        )
        for row in sorted(shard.settled):
            reason, members = shard.settled[row]
            if reason is None:
                writer.write(f"{row:09d}", members)
            else:
                writer.fail(reason)
        seconds = time.monotonic() - shard.started
        summary = writer.close(
            extra={"rows": shard.rows, "received_bytes": shard.received, "seconds": seconds}
        )
        if storage.is_remote(self.out):  # the tar, then the stats that say it is complete
            for ext in ("tar", "json"):
                local = self.stage / f"{shard_name(shard.index)}.{ext}"
                storage.upload(local, storage.join(self.out, local.name))
                local.unlink()
        shard.journal.remove()
        with self._lock:
            self._shards.pop(shard.index, None)
        if self.on_shard is not None:
            self.on_shard(
                {
                    "shard": shard.index,
                    "rows": shard.rows,
                    "samples": summary["samples"],
                    "failures": summary["failures"],
                    "received_bytes": shard.received,
                    "seconds": seconds,
                }
            )
