"""``cliplab data download PAIRS --out SHARDS``: (URL, caption) tables -> WebDataset shards.

    cliplab data download pairs.parquet --out shards/ --size 256 --resize-mode center-crop
    cliplab data download curated/kept.jsonl --out shards/ --respect-robots
    cliplab data download 's3://bucket/pairs/*.parquet' --out shards/ --engine ray

Re-running the same command resumes: complete shards are kept, a shard cut short by a kill
continues from its journal. The work is :mod:`cliplab.data.download`'s.
"""

from __future__ import annotations

import argparse

from cliplab.cli.common import add_out


def add_download(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from cliplab.data.download import RESIZE_MODES, DownloadConfig
    from cliplab.data.download.shards import ENCODINGS, ImageOptions

    d, image = DownloadConfig(), ImageOptions()
    parser = subparsers.add_parser(
        "download",
        help="download (URL, caption) pairs into WebDataset shards, politely and resumably",
        description="Fetch every URL of PAIRS (CSV/TSV/JSONL/Parquet, local or object storage; "
        "data curate's kept.jsonl as it is), check and resize each image, and write shards "
        "with a stats JSON each and a run summary (successes, failures by reason, bytes/s). "
        "Re-run the same command to resume.",
    )
    parser.add_argument("pairs", nargs="+", help="tables of pairs: files, folders or globs")
    add_out(
        parser,
        help="folder or object-storage URL for shard-NNNNNN.tar/.json and summary.json",
        url=True,
    )
    parser.add_argument("--url-column", default=d.url_column)
    parser.add_argument(
        "--caption-column", default=d.caption_column, help="(curate output: its 'text')"
    )
    parser.add_argument("--shard-size", type=int, default=d.shard_size, help="rows per shard")
    parser.add_argument("--threads", type=int, default=d.threads, help="downloads in flight")
    parser.add_argument("--processes", type=int, default=d.processes, help="worker processes")
    parser.add_argument(
        "--per-host", type=int, default=d.per_host, help="connections per host at most"
    )
    parser.add_argument(
        "--host-rate", type=float, default=d.host_rate, help="requests/s per host (0: no limit)"
    )
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds per read")
    parser.add_argument("--retries", type=int, default=d.retries)
    parser.add_argument(
        "--max-retry-after",
        type=float,
        default=d.max_retry_after,
        help="longest Retry-After honoured (seconds); a longer one fails the image",
    )
    parser.add_argument("--max-bytes", type=int, default=d.max_bytes, help="per image")
    parser.add_argument(
        "--agent-url", default=d.agent_url, help="the URL in the user agent (who to contact)"
    )
    parser.add_argument(
        "--opt-out-tags",
        default=",".join(d.opt_out_tags),
        help="X-Robots-Tag directives that opt an image out ('' to ignore the header)",
    )
    parser.add_argument(
        "--respect-robots", action="store_true", help="obey robots.txt for our user agent"
    )
    parser.add_argument("--size", type=int, default=image.size, help="target image size")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default=image.mode)
    parser.add_argument("--encode", choices=tuple(ENCODINGS), default=image.encoding)
    parser.add_argument("--quality", type=int, default=image.quality)
    parser.add_argument(
        "--min-size", type=int, default=image.min_size, help="smaller images fail as too-small"
    )
    parser.add_argument("--engine", choices=("local", "ray"), default=d.engine)
    parser.add_argument("--address", default=None, help="--engine ray: a cluster to join")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def run_download(args: argparse.Namespace) -> int:
    from cliplab.data import storage
    from cliplab.data.curate.inputs import expand_inputs
    from cliplab.data.download import DownloadConfig, download
    from cliplab.data.download.http import split_tags
    from cliplab.data.download.shards import ImageOptions

    config = DownloadConfig(
        url_column=args.url_column,
        caption_column=args.caption_column,
        shard_size=args.shard_size,
        threads=args.threads,
        processes=args.processes,
        per_host=args.per_host,
        host_rate=args.host_rate,
        timeout=args.timeout,
        retries=args.retries,
        max_retry_after=args.max_retry_after,
        max_bytes=args.max_bytes,
        agent_url=args.agent_url,
        opt_out_tags=split_tags(args.opt_out_tags),
        respect_robots=args.respect_robots,
        image=ImageOptions(
            size=args.size,
            mode=args.resize_mode,
            encoding=args.encode,
            quality=args.quality,
            min_size=args.min_size,
        ),
        engine=args.engine,
        address=args.address,
        limit=args.limit,
        progress=not args.quiet,
    )
    inputs = [p for p in expand_inputs(args.pairs) if not p.endswith(".tar")]
    if not inputs:
        raise ValueError(f"no tables of pairs in {args.pairs} (csv, tsv, jsonl, parquet)")
    summary = download(inputs, args.out, config)
    run = summary["this_run"]
    print(
        f"{summary['successes']:,} of {summary['rows']:,} images "
        f"({100 * summary['success_rate']:.1f}%) in {summary['shards']} shards at {args.out}"
        + (
            f" ({summary['shards_resumed']} kept from an earlier run)"
            if summary["shards_resumed"]
            else ""
        )
    )
    print(
        f"this run: {run['rows']:,} rows in {run['seconds']:.1f} s, "
        f"{run['images_per_s']:.1f} images/s, {run['bytes_per_s'] / 1e6:.2f} MB/s received"
    )
    for reason, count in summary["failures"].items():
        print(f"  {reason:<22} {count:>8,}")
    print(f"summary: {storage.join(args.out, 'summary.json')}")
    return 0
