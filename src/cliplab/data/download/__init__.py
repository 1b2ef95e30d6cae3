"""``cliplab data download``: a table of (URL, caption) pairs -> WebDataset shards.

The step between curation and training in the paper's data collection (img2dataset's job):

- **input**: the tables the data layer reads (CSV, TSV, JSONL, Parquet; local or object
  storage) with a URL and a caption column; ``data curate``'s ``kept.jsonl`` as it is (its
  ``row`` is read through, its ``text`` is the caption). Other columns go into each sample's
  json. Rows are cut into shards of ``shard_size`` in input order, so shard ``k`` always
  holds the same rows.
- **fetching**: ``threads`` downloads in flight per process (:class:`ShardDownloader`),
  at most ``per_host`` connections and ``host_rate`` requests/s per host (limits hold per
  process or Ray task), kept-alive connections, retries with backoff for timeouts, dropped
  connections, 429 and 5xx, honouring ``Retry-After`` (a host is paused); a size limit; a
  user agent naming cliplab and a URL.
- **opt-outs**: ``X-Robots-Tag`` ``noai``/``noimageai``/``noindex`` (configurable): the
  image is never written and its host is not asked again in the run (``opt-out-host``);
  robots.txt with ``respect_robots`` (fetched once per host).
- **images**: the data layer's decoder checks (not an image, truncated, decompression
  bomb, too small), a resize mode, re-encoded as JPEG or WebP; original size in the json.
- **output**: ``shard-000000.tar`` + ``shard-000000.json`` (samples, failures by reason,
  bytes, seconds) and ``summary.json`` for the run. A shard whose stats exist is complete
  and is skipped by a resumed run; a shard being written keeps a journal, so a killed run
  fetches nothing twice and writes the same shards as an uninterrupted one.
- **engines**: ``local`` (``processes`` worker processes, one shared by default) or ``ray``:
  a Ray task per shard, on a local cluster or at ``address``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import posixpath
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cliplab import __version__
from cliplab.data import storage
from cliplab.data.download.http import DEFAULT_OPT_OUTS, HttpClient
from cliplab.data.download.shards import (
    RESIZE_MODES,
    ImageOptions,
    Politeness,
    ShardDownloader,
    shard_name,
    staging,
)
from cliplab.data.manifest import iter_rows
from cliplab.fileio import write_json
from cliplab.progress import Progress

__all__ = ["RESIZE_MODES", "DownloadConfig", "download", "iter_pairs"]

DEFAULT_AGENT_URL = "https://github.com/cliplab/cliplab/blob/main/docs/wit.md"
Row = tuple[int, str, str, dict[str, Any]]


@dataclass(frozen=True)
class DownloadConfig:
    """Everything ``cliplab data download`` takes besides its inputs and output folder."""

    url_column: str = "url"
    caption_column: str = "caption"
    shard_size: int = 10_000
    threads: int = 32
    processes: int = 1
    per_host: int = 8
    host_rate: float = 0.0  # requests/s per host; 0: no limit
    timeout: float = 10.0
    retries: int = 2
    max_retry_after: float = 60.0
    max_bytes: int = 20 << 20
    agent_url: str = DEFAULT_AGENT_URL
    opt_out_tags: tuple[str, ...] = DEFAULT_OPT_OUTS
    respect_robots: bool = False
    image: ImageOptions = field(default_factory=ImageOptions)
    engine: str = "local"
    address: str | None = None
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("shard_size", "threads", "processes", "per_host", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("host_rate", "timeout", "max_retry_after", "retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be local or ray, got {self.engine!r}")

    @property
    def user_agent(self) -> str:
        return f"cliplab/{__version__} (+{self.agent_url})"

    def politeness(self) -> Politeness:
        return Politeness(
            self.user_agent,
            self.opt_out_tags,
            self.respect_robots,
            self.retries,
            self.max_retry_after,
        )


# --------------------------------------------------------------------------- input
def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A curated line ({"id", "text", "query", "row": {...}}) read through to its row."""
    inner = row.get("row")
    if isinstance(inner, dict):
        return {**inner, **{k: v for k, v in row.items() if k != "row"}}
    return row


def _jsonable(value: Any) -> Any:
    return (
        value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
    )


def iter_pairs(inputs: Sequence[str], config: DownloadConfig) -> Iterator[Row]:
    """(row number, url, caption, other columns) for every row of every input, in order.
    A row without a URL keeps its number (and fails as ``bad-url``), so shards stay put."""
    number = 0
    for path in inputs:
        for raw in iter_rows(path):
            if config.limit is not None and number >= config.limit:
                return
            row = _flat(raw)
            url = row.get(config.url_column)
            caption = row.get(config.caption_column)
            if caption is None and config.caption_column == "caption":
                caption = row.get("text")  # data curate's output
            extra = {
                k: _jsonable(v)
                for k, v in row.items()
                if k not in (config.url_column, config.caption_column)
            }
            yield number, url if isinstance(url, str) else "", str(caption or ""), extra
            number += 1


def _shards(rows: Iterator[Row], size: int) -> Iterator[tuple[int, list[Row]]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield row[0] // size, batch
            batch = []
    if batch:
        yield batch[0][0] // size, batch


def _complete(out: str, index: int) -> bool:
    name = shard_name(index)
    return storage.exists(storage.join(out, f"{name}.json")) and storage.exists(
        storage.join(out, f"{name}.tar")
    )


# --------------------------------------------------------------------------- engines
def _downloader(out: str, config: DownloadConfig, **hooks: Any) -> ShardDownloader:
    client = HttpClient(config.user_agent, config.timeout, config.max_bytes)
    return ShardDownloader(
        out,
        image=config.image,
        politeness=config.politeness(),
        client=client,
        threads=config.threads,
        per_host=config.per_host,
        host_rate=config.host_rate,
        **hooks,
    )


def download_shard(out: str, index: int, rows: list[Row], config: DownloadConfig) -> int:
    """One shard, start to end, in this process (a Ray task's body). Returns its index."""
    worker = _downloader(out, config)
    worker.add(index, rows)
    worker.finish()
    return index


def _process_worker(out: str, config: DownloadConfig, tasks: Any, done: Any) -> None:
    """A worker process of the local engine: shards from ``tasks`` until a None."""
    worker = _downloader(out, config, on_shard=done.put)
    try:
        while (task := tasks.get()) is not None:
            worker.add(*task)
        worker.finish()
    except BaseException as e:
        done.put({"error": repr(e)})
        raise
    done.put(None)


def _run_local(
    out: str, shards: Iterator[tuple[int, list[Row]]], config: DownloadConfig, bar: Progress
) -> None:
    totals: Counter[str] = Counter()

    def shard_done(stats: dict[str, Any]) -> None:  # from worker processes, shard by shard
        totals["ok"] += stats["samples"]
        totals["failed"] += stats["rows"] - stats["samples"]
        bar.update(stats["rows"], dict(totals))

    if config.processes == 1:  # progress row by row (worker threads share the bar)
        lock = threading.Lock()

        def row_done(reason: str | None) -> None:
            with lock:
                totals["ok" if reason is None else "failed"] += 1
                bar.update(1, dict(totals))

        worker = _downloader(out, config, on_row=row_done)
        for index, rows in shards:
            worker.add(index, rows)
        worker.finish()
        return
    # fork where there is one: the workers start with the modules already imported (no
    # second torch import); nothing has started a thread yet when they are made
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    tasks, done = ctx.Queue(maxsize=config.processes), ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(out, config, tasks, done), daemon=True)
        for _ in range(config.processes)
    ]
    for p in procs:
        p.start()
    finished = 0

    def check() -> None:
        """Take the workers' messages; a worker that died (killed, out of memory) is an
        error here rather than a wait forever."""
        nonlocal finished
        while True:
            try:
                message = done.get_nowait()
            except queue.Empty:
                break
            finished += message is None
            _drain(message, shard_done)
        if finished < len(procs) and any(p.exitcode not in (None, 0) for p in procs):
            codes = [p.exitcode for p in procs]
            raise RuntimeError(f"a download process died (exit codes {codes}); re-run to resume")

    try:
        for task in shards:
            while True:
                check()
                try:
                    tasks.put(task, timeout=1.0)
                    break
                except queue.Full:
                    continue
        for _ in procs:
            while True:
                check()
                try:
                    tasks.put(None, timeout=1.0)
                    break
                except queue.Full:
                    continue
        while finished < len(procs):
            check()
            time.sleep(0.05)
    finally:
        for p in procs:
            if finished < len(procs):
                p.terminate()
            p.join()


def _drain(message: dict[str, Any] | None, shard_done: Any) -> None:
    if message is None:
        return
    if "error" in message:
        raise RuntimeError(f"a download process failed: {message['error']}")
    shard_done(message)


def _run_ray(
    out: str, shards: Iterator[tuple[int, list[Row]]], config: DownloadConfig, bar: Progress
) -> None:
    from cliplab.data.curate import ray_engine

    cpus = ray_engine.start(config.address)
    ray = ray_engine._ray()
    task = ray.remote(num_cpus=1)(download_shard)
    inflight: dict[Any, int] = {}
    sizes: dict[int, int] = {}

    def collect(block: bool) -> None:
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=None if block else 0)
        for ref in ready:
            index = ray.get(ref)
            inflight.pop(ref)
            bar.update(sizes.pop(index))

    try:
        for index, rows in shards:
            while len(inflight) >= 2 * cpus:
                collect(block=True)
            sizes[index] = len(rows)
            inflight[task.remote(out, index, rows, config)] = index
        while inflight:
            collect(block=True)
    finally:
        ray_engine.stop()


# --------------------------------------------------------------------------- the run
def _summary(out: str, started: float, resumed: int, done: list[int]) -> dict[str, Any]:
    stats = {}
    for path in storage.list_files(out, ".json"):
        name = posixpath.basename(path)
        if name.startswith("shard-"):
            stats[int(name[6:-5])] = json.loads(storage.read_text(path))
    this_run = [stats[i] for i in done if i in stats]
    stats = list(stats.values())
    failures: Counter[str] = Counter()
    for s in stats:
        failures.update(s.get("failures", {}))
    samples = sum(s["samples"] for s in stats)
    seconds = time.monotonic() - started
    received = sum(s.get("received_bytes", 0) for s in this_run)
    rows = sum(s.get("rows", 0) for s in this_run)
    total = samples + sum(failures.values())
    return {
        "rows": total,
        "successes": samples,
        "failed": sum(failures.values()),
        "success_rate": samples / total if total else 0.0,
        "failures": dict(failures.most_common()),
        "shards": len(stats),
        "shards_resumed": resumed,
        "this_run": {
            "rows": rows,
            "successes": sum(s["samples"] for s in this_run),
            "received_bytes": received,
            "seconds": seconds,
            "rows_per_s": rows / seconds if seconds else 0.0,
            "images_per_s": sum(s["samples"] for s in this_run) / seconds if seconds else 0.0,
            "bytes_per_s": received / seconds if seconds else 0.0,
        },
    }


def _check_layout(out: str, stage: Any, inputs: Sequence[str], config: DownloadConfig) -> None:
    """Which rows a shard holds depends on the inputs, ``shard_size`` and ``limit``: a folder
    written with others cannot be resumed (its complete shards would hold other rows)."""
    layout = {
        "inputs": [os.fspath(i) for i in inputs],
        "shard_size": config.shard_size,
        "limit": config.limit,
        "url_column": config.url_column,
    }
    where = storage.join(out, "layout.json")
    if storage.exists(where):
        old = json.loads(storage.read_text(where))
        if old != layout:
            changed = sorted(k for k in layout if old.get(k) != layout[k])
            raise ValueError(
                f"{out} holds shards of another download ({', '.join(changed)} differ: "
                f"{ {k: old.get(k) for k in changed} }); resume with the same inputs and "
                "settings, or use another --out"
            )
        return
    write_json(stage / "layout.json", layout)
    if storage.is_remote(out):
        storage.upload(stage / "layout.json", where)


def download(inputs: Sequence[str], out: str | os.PathLike[str], config: DownloadConfig) -> dict:
    """Download every pair of ``inputs`` into shards in ``out``; returns the run summary
    (also written to ``out/summary.json``). Complete shards of an earlier run are kept."""
    out = os.fspath(out)
    stage = staging(out)
    stage.mkdir(parents=True, exist_ok=True)
    _check_layout(out, stage, inputs, config)
    started = time.monotonic()
    counts = {"resumed": 0}
    done: list[int] = []

    def todo() -> Iterator[tuple[int, list[Row]]]:
        for index, rows in _shards(iter_pairs(inputs, config), config.shard_size):
            if _complete(out, index):
                counts["resumed"] += 1
                continue
            done.append(index)
            yield index, rows

    with Progress(desc="download", unit="img", enabled=config.progress) as bar:
        if config.engine == "ray":
            _run_ray(out, todo(), config, bar)
        else:
            _run_local(out, todo(), config, bar)
    summary = _summary(out, started, counts["resumed"], done)
    summary["config"] = {**asdict(config), "user_agent": config.user_agent}
    write_json(stage / "summary.json", summary)
    if storage.is_remote(out):
        storage.upload(stage / "summary.json", storage.join(out, "summary.json"))
    return summary
