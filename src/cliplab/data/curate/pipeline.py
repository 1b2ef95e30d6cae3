"""The curation pipeline (``cliplab data curate``): prepare the query list and the language
filter, then stream the inputs, check and match texts in worker processes chunk by chunk,
and apply the per-query cap in input order in the main process, so the kept set does not
depend on the number of workers.

The cap: each kept pair is counted against the least-used query it matches; a pair is
dropped (``cap``) only when every query it matches already has ``cap`` pairs. The paper's
cap is 20,000; frequent queries cannot crowd out the rare ones. Output: ``kept.jsonl`` (one
line per kept pair: its id, text, the query it counts for and the input row), kept
WebDataset samples as shards when the input is shards, ``queries.tsv``, and ``report.json``
+ ``report.md``.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cliplab.data.curate.balance import balance_reason
from cliplab.data.curate.filters import EnglishFilter, junk_reason, tokenize
from cliplab.data.curate.inputs import Record, read_records
from cliplab.data.curate.matching import QueryMatcher, TextChecker
from cliplab.data.curate.queries import (
    QueryList,
    build_query_list,
    pmi_bigrams,
    wordfreq_words,
    wordnet_lemmas,
)
from cliplab.data.curate.report import curation_report, report_markdown
from cliplab.fileio import AtomicFile, write_json, write_text

__all__ = [
    "CurateConfig",
    "checked_local",
    "curate",
    "prepare",
]


@dataclass
class CurateConfig:
    """The recipe's knobs (defaults: the paper's cap, a Wikipedia-like frequency threshold)."""

    cap: int = 20000
    min_zipf: float = 1.5
    use_wordfreq: bool = True
    wordnet_dir: str | None = None  # None: the installed wordnet-base, if any
    use_wordnet: bool = True
    bigrams: int = 10000
    bigram_min_count: int = 5
    bigram_min_pmi: float = 4.0
    pmi_sample: int = 200_000
    extra_queries: tuple[str, ...] = ()
    queries_file: str | None = None  # a saved query list replaces the parts above
    language: str | None = "en"  # None: keep every language
    english_need: float = 0.5
    english_margin: float = 1.0
    english_vocab: tuple[str, ...] = ()  # without wordfreq: the English vocabulary to use
    workers: int = 0  # 0: one process per CPU core but one; 1: in this process
    chunk_size: int = 2000
    # "cap": at most `cap` pairs per query, in input order (the paper); "balance": MetaCLIP's
    # balancing with t = `cap`: count matches per query over the whole pool, then keep each
    # pair with probability 1 - prod(1 - min(1, t / count_q)) over its queries
    select: str = "cap"
    seed: int = 0  # the balancing draws (deterministic per pair id)
    engine: str = "local"  # "local": this process and a pool; "ray": Ray Data stages
    address: str | None = None  # a Ray cluster (None: start a local one)
    limit: int | None = None
    write_shards: bool = True
    max_samples_per_shard: int = 10000
    progress_every: float = 5.0


_CHECKER: TextChecker | None = None


def _init_worker(queries: list[str], english: EnglishFilter | None) -> None:
    global _CHECKER
    _CHECKER = TextChecker(QueryMatcher(queries), english)


def _check_chunk(texts: list[str]) -> list[tuple[str | None, list[int]]]:
    assert _CHECKER is not None
    return [_CHECKER(t) for t in texts]


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


CheckResult = tuple[str | None, list[int]]


def _records(
    read: tuple[Sequence[str], str, str | None, str | None], limit: int | None
) -> Iterator[Record]:
    records = read_records(*read)
    return records if limit is None else (r for r, _ in zip(records, range(limit)))


def checked_local(
    read: tuple[Sequence[str], str, str | None, str | None],
    queries: list[str],
    english: EnglishFilter | None,
    config: CurateConfig,
    workers: int,
    counts: list[int] | None = None,
) -> Iterator[tuple[Record, CheckResult]]:
    """Every input record in order with its check ``(reason, query ids)``: in this process
    (``workers <= 1``) or chunk by chunk in a process pool, at most 2 chunks per worker in
    flight. With ``counts`` (balancing), a checked pair the draw rejects gets ``"balance"``."""

    def decide(
        chunk: list[Record], results: list[CheckResult]
    ) -> Iterator[tuple[Record, CheckResult]]:
        for record, (reason, found) in zip(chunk, results):
            if reason is None and counts is not None and record.error is None:
                reason = balance_reason(record.id, found, counts, config.cap, config.seed)
            yield record, (reason, found)

    records = _records(read, config.limit)
    if workers <= 1:
        _init_worker(queries, english)
        for chunk in _chunks(records, config.chunk_size):
            yield from decide(chunk, _check_chunk([r.text for r in chunk]))
        return
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    )
    with context.Pool(workers, initializer=_init_worker, initargs=(queries, english)) as pool:
        pending: deque[tuple[list[Record], Any]] = deque()
        for chunk in _chunks(records, config.chunk_size):
            pending.append((chunk, pool.apply_async(_check_chunk, ([r.text for r in chunk],))))
            while len(pending) > 2 * workers:  # bounded memory
                done, result = pending.popleft()
                yield from decide(done, result.get())
        while pending:
            done, result = pending.popleft()
            yield from decide(done, result.get())


def _english_filter(
    config: CurateConfig, words: Sequence[str], lemmas: Sequence[str]
) -> EnglishFilter | None:
    if config.language is None:
        return None
    if config.language != "en":
        raise ValueError(
            f"only English filtering is implemented (language='en' or None), got {config.language!r}"
        )
    options = {"need": config.english_need, "margin": config.english_margin}
    if config.english_vocab:
        return EnglishFilter.from_words(config.english_vocab, **options)
    if config.use_wordfreq:
        return EnglishFilter.from_wordfreq(**options)
    return EnglishFilter.from_words(
        [*words, *(w for lemma in lemmas for w in lemma.split())], **options
    )


def prepare(
    inputs: Sequence[str],
    config: CurateConfig,
    fmt: str = "auto",
    text_column: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[QueryList, EnglishFilter | None, dict[str, Any]]:
    """The query list and the language filter for these inputs (reads a sample for the PMI bigrams)."""
    info: dict[str, Any] = {}
    start = time.perf_counter()
    if config.queries_file:
        queries = QueryList.load(config.queries_file)
        info["queries_file"] = config.queries_file
    else:
        words = wordfreq_words(config.min_zipf) if config.use_wordfreq else []
        lemmas: list[str] = []
        if config.use_wordnet:
            directory = config.wordnet_dir
            if directory is None:
                log(
                    "curate: no WordNet directory given (wordnet_dir; `cliplab data install "
                    "--only wordnet-base` installs one); no WordNet queries"
                )
            else:
                lemmas = wordnet_lemmas(directory)
                info["wordnet"] = directory
        english = _english_filter(config, words, lemmas)
        bigrams: list[tuple[str, float, int]] = []
        if config.bigrams > 0:
            # statistics of the texts that can be kept: content, in the language asked for
            sample = (
                r.text
                for r, _ in zip(read_records(inputs, fmt, text_column), range(config.pmi_sample))
            )
            eligible = (
                t
                for t in sample
                if junk_reason(t) is None and (english is None or english(t, tokenize(t)))
            )
            bigrams = pmi_bigrams(
                eligible,
                min_count=config.bigram_min_count,
                min_pmi=config.bigram_min_pmi,
                top=config.bigrams,
            )
            info["bigram_examples"] = bigrams[:20]
        queries = build_query_list(
            words=words,
            wordnet=lemmas,
            bigrams=[b for b, _, _ in bigrams],
            extra=config.extra_queries,
        )
    if config.queries_file:
        english = _english_filter(config, [q for q in queries.queries if " " not in q], [])
    info["queries"] = {"total": len(queries), **queries.counts()}
    info["prepare_seconds"] = round(time.perf_counter() - start, 2)
    return queries, english, info


def _stops_ray(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Shut down the Ray cluster the ray engine started for this call, however it ends."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            if "cliplab.data.curate.ray_engine" in sys.modules:
                sys.modules["cliplab.data.curate.ray_engine"].stop()

    return wrapper


@_stops_ray
def curate(
    inputs: Sequence[str],
    out: str | os.PathLike[str],
    config: CurateConfig | None = None,
    *,
    fmt: str = "auto",
    text_column: str | None = None,
    id_column: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Curate ``inputs`` into ``out`` (kept.jsonl, shards/ for shard inputs, report.json/.md)."""
    config = config or CurateConfig()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    queries, english, info = prepare(inputs, config, fmt, text_column, log)
    log(
        f"curate: {len(queries):,} queries ({', '.join(f'{k} {v:,}' for k, v in queries.counts().items())}); prepared in {info['prepare_seconds']} s"
    )
    queries.save(out_dir / "queries.tsv")

    if config.select not in ("cap", "balance"):
        raise ValueError(f"select must be 'cap' or 'balance', got {config.select!r}")
    if config.engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {config.engine!r}")
    # the main process applies the cap (or the balancing) and writes; checking runs beside
    workers = config.workers or max(1, (os.cpu_count() or 1) - 1)
    read = (inputs, fmt, text_column, id_column)
    if config.engine == "ray":
        from cliplab.data.curate import ray_engine

        workers = ray_engine.start(config.address, config.workers)

        def checked(counts: list[int] | None = None, light: bool = False) -> Iterator[Any]:
            return ray_engine.checked(read, queries.queries, english, config, counts, light)

    else:

        def checked(counts: list[int] | None = None, light: bool = False) -> Iterator[Any]:
            return checked_local(read, queries.queries, english, config, workers, counts)

    kept_per_query = [0] * len(queries)
    cap_drops: Counter[int] = Counter()
    reasons: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    total = kept = 0
    writer = None
    start = time.perf_counter()
    last_log = start
    counts: list[int] | None = None
    if config.select == "balance":  # first pass: matches per query over the whole pool
        counts = [0] * len(queries)
        for n, (_, (reason, found)) in enumerate(checked(light=True), 1):
            if reason is None:
                for q in found:
                    counts[q] += 1
            if n % 10000 == 0:
                last_log = _progress(log, start, last_log, n, 0, config.progress_every, "counted")
        info["balance_counts"] = {"queries_matched": sum(1 for c in counts if c)}
        log(f"curate: counted matches of {sum(1 for c in counts if c):,} queries; balancing")

    def consume(record: Record, reason: str | None, found: list[int]) -> None:
        nonlocal total, kept, writer
        total += 1
        if record.error is not None:  # a malformed input record, counted by its reason
            reason = record.error
        if reason is None:
            if counts is not None:  # balanced: the pair counts for its rarest query
                q = min(found, key=lambda i: (counts[i], i))
            else:
                q = min(found, key=lambda i: (kept_per_query[i], i))
                if kept_per_query[q] >= config.cap:
                    reason = "cap"
                    cap_drops[q] += 1
            if reason is None:
                kept_per_query[q] += 1
                kept += 1
                line = {"id": record.id, "text": record.text, "query": queries.queries[q]}
                if record.row is not None:
                    line["row"] = record.row
                if record.members is not None:
                    line["shard"] = record.shard
                    if config.write_shards:
                        writer = writer or _shard_writer(out_dir, config)
                        writer.write(f"{kept - 1:09d}", _with_curation(record, queries.queries[q]))
                kept_file.write(json.dumps(line, ensure_ascii=False) + "\n")
                return
        reasons[reason] += 1
        bucket = examples.setdefault(reason, [])
        if len(bucket) < 8:
            bucket.append(record.text[:200])

    with (
        AtomicFile(out_dir / "kept.jsonl") as kept_path,
        open(kept_path, "w", encoding="utf-8") as kept_file,
    ):
        pass_start = time.perf_counter()
        first = None
        for record, (reason, found) in checked(counts):
            if first is None:  # the engine's start-up (a Ray cluster's workers) ends here
                first = time.perf_counter()
            consume(record, reason, found)
            if total % 1000 == 0:
                last_log = _progress(log, start, last_log, total, kept, config.progress_every)
    shards = writer.close() if writer is not None else None
    end = time.perf_counter()
    seconds = end - start
    if first is not None:
        info["startup_seconds"] = round(first - pass_start, 2)
        info["steady_texts_per_second"] = round((total - 1) / max(end - first, 1e-9), 1)
    report = curation_report(
        queries,
        kept_per_query,
        cap_drops,
        reasons,
        examples,
        total,
        kept,
        seconds,
        workers,
        config,
        info,
        shards,
    )
    write_json(out_dir / "report.json", report, indent=1)
    write_text(out_dir / "report.md", report_markdown(report))
    log(
        f"curate: {total:,} texts in {seconds:.1f} s ({report['texts_per_second']:,.0f} texts/s, {workers} worker(s)); kept {kept:,} ({report['kept_fraction']:.1%})"
    )
    log(f"curate: dropped {dict(reasons.most_common())}; report in {out_dir / 'report.md'}")
    return report


def _progress(
    log: Callable[[str], None],
    start: float,
    last: float,
    total: int,
    kept: int,
    every: float,
    what: str = "texts",
) -> float:
    now = time.perf_counter()
    if now - last < every:
        return last
    log(f"curate: {total:,} {what}, {total / max(now - start, 1e-9):,.0f} texts/s, kept {kept:,}")
    return now


def _shard_writer(out_dir: Path, config: CurateConfig) -> Any:
    from cliplab.data.shardwriter import ShardWriter

    return ShardWriter(
        out_dir / "shards", prefix="curated", max_samples=config.max_samples_per_shard
    )


def _with_curation(record: Record, query: str) -> dict[str, bytes]:
    members = dict(record.members or {})
    meta: Any = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except ValueError:
            meta = {}
    if not isinstance(meta, dict):
        meta = {"value": meta}
    meta.update(curate_query=query, source_key=record.id)
    members["json"] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    return members
