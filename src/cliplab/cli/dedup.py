"""``cliplab dedup``: exact and near-duplicate images of an embedded collection.

cliplab dedup pictures                       # threshold measured on edits of its own images
cliplab dedup pictures --threshold 0.95      # a threshold of your own (still measured)
cliplab dedup pictures --json                # the report as JSON (also in pictures/dedup.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cliplab.cli.common import add_device


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dedup",
        help="find exact and near-duplicate images of an embedded collection",
        description="Exact duplicates (same bytes) and near duplicates (re-encodes, resizes, "
        "crops, small edits: embeddings at least THRESHOLD similar, grouped) among the live "
        "images of a collection `cliplab embed` wrote. The threshold is the lowest whose "
        "precision reaches --precision on synthetic edits of a sample of the collection's own "
        "images against each one's nearest other image. Pairs below it but unusually similar "
        "are listed apart. The report goes to COLLECTION/dedup.json (or --out).",
    )
    p.add_argument("collection", type=Path, help="a directory `cliplab embed` wrote")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity of near duplicates, in [-1, 1] (default: measured)")  # fmt: skip
    p.add_argument("--precision", type=float, default=0.99,
                   help="the precision the measured threshold must reach (default 0.99)")  # fmt: skip
    p.add_argument("--sample", type=int, default=200,
                   help="images edited to measure the threshold (default 200)")  # fmt: skip
    p.add_argument("--similar", type=float, default=None,
                   help="list pairs from this similarity up to the threshold as similar "
                   "(default: the 90th percentile of the sampled images' nearest distinct image)")  # fmt: skip
    p.add_argument("-k", type=int, default=10, help="neighbours compared per image (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and its edits")
    p.add_argument("--show", type=int, default=5, help="groups and pairs printed of each kind")
    p.add_argument("--out", type=Path, default=None,
                   help="where the JSON report goes (default: COLLECTION/dedup.json)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.search.dedup import find_duplicates

    if args.threshold is not None and not -1 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be in [-1, 1], got {args.threshold}")
    if args.sample < 1:
        raise ValueError(f"--sample must be at least 1, got {args.sample}")
    if not (args.collection / "embed.json").is_file():
        raise ValueError(f"{args.collection} is not an embedded collection: run `cliplab embed`")
    report = find_duplicates(
        args.collection,
        threshold=args.threshold,
        precision=args.precision,
        sample=args.sample,
        similar=args.similar,
        k=args.k,
        seed=args.seed,
        device=args.device,
        out=args.out,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.summary(show=max(0, args.show)))
    if not report.chosen_on["reached"] and report.chosen_on["method"] != "given":
        print(
            f"cliplab dedup: no threshold reached precision {args.precision} on the edits; "
            "the best F1 was used (see chosen_on in the report)",
            file=sys.stderr,
        )
    return 0


__all__ = ["add_parser", "run"]
