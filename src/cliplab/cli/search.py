"""``cliplab embed``, ``cliplab index``, ``cliplab search``: search your images with CLIP.

cliplab embed ~/Pictures --model ViT-B-32.pt --out pictures      # images -> embeddings
cliplab index pictures                                           # a FAISS index, recall
cliplab search pictures "a red car" -k 10                        # text -> images
cliplab search pictures --image query.jpg                        # image -> images
cliplab serve pictures                                           # the web app
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cliplab.cli.common import (
    add_device,
    add_model,
    add_out,
    add_runtime,
    add_set,
    load_model,
    model_settings,
)
from cliplab.data.sources import KINDS, spec_for_path

SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1000000"`` -> bytes."""
    value = text.strip().upper().removesuffix("B")
    unit = value[-1] if value and value[-1] in SIZE_UNITS else ""
    try:
        return int(float(value[: len(value) - len(unit)]) * SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 4G or 512M, got {text!r}"
        ) from None


# --------------------------------------------------------------------------- embed


def add_embed(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed a collection of images (and captions) for search",
        description="Embed every image of SOURCE (a folder, recursively; a CSV/Parquet "
        "manifest; WebDataset shards) with the model into OUT: float16 embeddings in parts, a "
        "Parquet metadata table, the model's name and fingerprint. Bad images are skipped and "
        "counted by reason (exit status 1 when any); re-running resumes a killed run.",
    )
    p.add_argument("source", help="a folder, a .csv/.tsv, a .parquet, or shards")
    add_model(
        p,
        required=False,
        help="the model (any checkpoint or name cliplab.load reads); an existing collection "
        "is resumed or synced with the model it records when none is given",
    )
    add_out(p, help="collection directory")
    add_set(p)
    add_device(p)
    add_runtime(p)
    p.add_argument("--kind", choices=KINDS, help="source kind (default: from SOURCE)")
    p.add_argument("--image-column", default="image", help="manifest image column")
    p.add_argument("--caption-column", default="caption", help="manifest caption column")
    p.add_argument("--root", help="folder that relative manifest paths start from")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (0: in this one; default: 0 on a CPU, where the model and the "
        "decoders share the cores, else one per core but one, at most 8)",
    )
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--no-captions", action="store_true", help="embed images only")
    p.add_argument("--part-size", type=int, default=10_000, help="images per part (resume unit)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: decoding processes and the model here; ray: Ray Data decode tasks "
        "feeding model actors (one per GPU)",
    )
    p.add_argument(
        "--address", default=None, help="--engine ray: a cluster (default: start a local one)"
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="a folder: keep the collection in step as files appear, change or go (Ctrl-C stops)",
    )
    p.add_argument(
        "--interval", type=float, default=2.0, help="--watch without inotify: seconds between polls"
    )
    p.set_defaults(run=run_embed)


def _watch(spec: Any, args: argparse.Namespace, run_once: Any) -> int:
    """``--watch``: sync again whenever the folder changes, until interrupted."""
    import signal

    from cliplab.search.sync import Watcher

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and a service manager's SIGTERM both end the watch cleanly (a sync in progress
    # is abandoned before its commit: the collection keeps its last snapshot); SIGINT is set
    # explicitly because a shell may start background jobs with it ignored
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    watcher = Watcher(spec.root, interval=args.interval, ignore=args.out)
    print(f"watching {spec.root} ({watcher.kind}); Ctrl-C to stop", flush=True)
    try:
        while True:
            watcher.wait()
            try:
                run_once()
            except (OSError, ValueError) as e:  # a folder in flux: say so, keep watching
                print(f"cliplab embed --watch: this sync failed ({e}); the collection keeps "
                      "its last snapshot, the next change tries again", file=sys.stderr)  # fmt: skip
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("stopped watching")
        return 0
    finally:
        watcher.close()


def run_embed(args: argparse.Namespace) -> int:
    from cliplab.search.embed import embed

    source = Path(args.source)
    spec = spec_for_path(
        str(source.resolve()) if source.exists() else args.source,
        args.kind,
        image_column=args.image_column,
        caption_column=args.caption_column,
        root=args.root,
    )
    if spec.kind == "synthetic":
        raise ValueError("embed reads images: give a folder, a manifest or shards")
    if args.model is None:  # the collection's own model, with its settings
        try:
            info = json.loads((Path(args.out) / "embed.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ValueError("--model is needed to start a new collection") from None
        args.model = info["model"]
        if not args.settings:
            args.settings = [
                f"{k}={json.dumps(v)}" for k, v in info.get("model_settings", {}).items()
            ]
    model, preprocess = load_model(args)
    workers = args.workers
    if workers is None:
        import os

        on_gpu = next(model.parameters()).device.type != "cpu"
        workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if on_gpu else 0
    if args.watch and spec.kind != "folder":
        raise ValueError("--watch keeps a folder's collection in step: SOURCE must be a folder")

    def run_once() -> Any:
        return embed(
            spec,
            args.out,
            model,
            preprocess,
            model_spec=str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
            model_settings=model_settings(args),
            batch_size=args.batch_size,
            workers=workers,
            dtype=args.dtype,
            captions=not args.no_captions,
            part_size=args.part_size,
            progress=not args.quiet,
            engine=args.engine,
            address=args.address,
        )

    result = run_once()
    if args.watch:
        return _watch(spec, args, run_once)
    failed = sum(result.failures.values())
    print(
        f"embedded {result.embedded} images in {result.seconds:.1f} s "
        f"({result.images_per_s:.1f} images/s); {result.total} in {args.out}"
        + (f"; resumed after {result.resumed_from} records" if result.resumed_from else "")
    )
    if failed:
        reasons = ", ".join(f"{r} {n}" for r, n in result.failures.most_common())
        print(f"cliplab embed: skipped {failed} bad record(s): {reasons} "
              f"(each in {Path(args.out) / 'failures.jsonl'})", file=sys.stderr)  # fmt: skip
    print(f"next: cliplab index {args.out}")
    return 1 if failed else 0


# --------------------------------------------------------------------------- index


def add_index(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index",
        help="build (or grow, or merge) the FAISS index of an embedded collection",
        description="Exact inner product below --exact-below vectors; HNSW (full vectors or "
        "8-bit) or IVF-PQ above, "
        "chosen from the count and --memory-budget. Prints recall@10 against exact search. "
        "Run again after embedding more: the new vectors are added.",
    )
    p.add_argument("collection", type=Path, help="a directory `cliplab embed` wrote")
    p.add_argument("--memory-budget", type=parse_size, default=None, help="e.g. 4G (default: any)")
    p.add_argument("--exact-below", type=int, default=50_000, help="exact search up to this many")
    p.add_argument(
        "--kind", choices=("exact", "hnsw", "hnsw-sq8", "ivf-pq"), help="force the index kind"
    )
    p.add_argument("--rebuild", action="store_true", help="build afresh even if an index exists")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="OTHER",
        help="merge OTHER ... (same model) into --out",
    )
    p.add_argument("--out", type=Path, help="with --merge: the merged collection's directory")
    p.add_argument("--json", action="store_true", help="print the index info as JSON")
    p.set_defaults(run=run_index)


def run_index(args: argparse.Namespace) -> int:
    from cliplab.search.collection import Collection
    from cliplab.search.index import add_new, build_index, merge_collections

    collection = Collection(args.collection)
    if args.merge is not None:
        if args.out is None:
            raise ValueError("--merge needs --out (the merged collection's directory)")
        others = [Collection(path) for path in args.merge]
        collection = merge_collections([collection, *others], args.out)
        names = ", ".join(str(p) for p in [args.collection, *args.merge])
        print(f"merged {names} into {args.out} ({len(collection)} images)")
    exists = (collection.path / "index" / "info.json").is_file()
    if exists and not args.rebuild and args.kind is None:
        info = add_new(collection)
        action = f"added {info['added']} new vectors to"
    else:
        info = build_index(
            collection,
            memory_budget=args.memory_budget,
            exact_below=args.exact_below,
            kind=args.kind,
        )
        action = "built"
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    recalls = ", ".join(f"{k} {v:.3f}" for k, v in info.items() if k.startswith("recall"))
    print(
        f"{action} the index ({info['plan']['kind']}: {info['plan']['factory']}) of "
        f"{info['ntotal']} vectors, {info['bytes'] / 2**20:.1f} MiB"
        + (f", in {info['build_seconds']:.2f} s" if action == "built" else "")
        + (f"; {recalls} against exact search" if recalls else "")
    )
    return 0


# --------------------------------------------------------------------------- search


def add_search(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="search an embedded collection with words or an image",
        description="Text -> images (QUERY), image -> images (--image), both mixed (QUERY and "
        "--image), image -> captions (--image --captions, when captions were embedded). "
        'Words after a minus are subtracted ("beach -people", -"red car"). Each result has a '
        "relevance: the share of unrelated queries whose best match in this collection scores "
        "lower (a SigLIP model's own probability). The model is the collection's own.",
    )
    p.add_argument("collection", type=Path)
    p.add_argument(
        "query", nargs="?", help='words to search for; -word subtracts ("beach -people")'
    )
    p.add_argument("--image", type=Path, help="search with an image (with QUERY: a mix of both)")
    p.add_argument("--like", type=int, metavar="ID",
                   help="more like image ID of the collection (its stored embedding)")  # fmt: skip
    p.add_argument("--image-weight", type=float, default=0.5,
                   help="with QUERY and --image: the image's share of the mix (default 0.5)")  # fmt: skip
    p.add_argument("--negative-weight", type=float, default=0.5,
                   help="how much the -terms subtract (default 0.5)")  # fmt: skip
    p.add_argument("--min-relevance", type=float, default=None,
                   help="only results at least this relevant (0-1), possibly none")  # fmt: skip
    p.add_argument("--captions", action="store_true", help="with --image: the nearest captions")
    p.add_argument("-k", type=int, default=20, help="results (default 20)")
    p.add_argument("--exact", action="store_true", help="exact search, even with an index")
    add_filters(p)
    p.add_argument("--json", action="store_true")
    add_device(p)
    p.set_defaults(run=run_search)


def add_filters(p: argparse.ArgumentParser) -> None:
    """The filter and order flags (:mod:`cliplab.search.filters`); with no QUERY, the images
    that pass are listed by date."""
    from cliplab.search.filters import SORTS

    g = p.add_argument_group("filters (applied inside the search: k results when k pass)")
    g.add_argument("--after", metavar="YYYY-MM-DD", help="taken on or after this day")
    g.add_argument("--before", metavar="YYYY-MM-DD", help="taken before this day")
    g.add_argument("--path", metavar="PREFIX|GLOB", help="folder prefix or glob (e.g. '2024/*')")
    g.add_argument("--camera", help="words of the camera's make and model ('iphone 15')")
    g.add_argument("--bbox", metavar="S,W,N,E", help="taken inside this box (degrees)")
    g.add_argument("--near", metavar="LAT,LON,KM", help="taken within KM of a point")
    g.add_argument("--sort", choices=SORTS, default=None,
                   help="score (best first; the default with a query), date (newest first; "
                   "the default without one) or oldest")  # fmt: skip


def parse_filters(args: argparse.Namespace) -> Any:
    from cliplab.search.filters import Filter

    return Filter.parse(
        after=args.after, before=args.before, path=args.path, camera=args.camera,
        bbox=args.bbox, near=args.near,
    )  # fmt: skip


def run_search(args: argparse.Namespace) -> int:
    from cliplab.data.stream import BadSample
    from cliplab.search.query import Searcher

    where = parse_filters(args)
    if args.like is not None and (args.query is not None or args.image is not None):
        raise ValueError("--like searches with one image of the collection: no QUERY or --image")
    if args.query is None and args.image is None and args.like is None and where.empty:
        raise ValueError("give QUERY words, --image, both, or filters to list images by date")
    if args.captions and (args.image is None or args.query is not None):
        raise ValueError("--captions searches captions with an image alone: give --image only")
    if not 1 <= args.k <= 10_000:
        raise ValueError(f"-k must be between 1 and 10000, got {args.k}")
    if args.min_relevance is not None and not 0 <= args.min_relevance <= 1:
        raise ValueError(f"--min-relevance must be in [0, 1], got {args.min_relevance}")
    searcher = Searcher(args.collection, device=args.device, use_index=not args.exact)
    try:
        if args.captions:
            hits = searcher.captions_for_image(args.image, args.k)
        elif args.like is not None:
            try:
                vector = searcher.vector_of(args.like)
            except IndexError as e:
                raise ValueError(str(e)) from None
            hits = searcher.nearest(
                vector, args.k, args.min_relevance, where=where, sort=args.sort or "score"
            )
        elif args.query is None and args.image is None:
            hits = searcher.browse(where, args.k, args.sort or "date")
        else:
            hits = searcher.search(
                args.query,
                args.image,
                args.k,
                min_relevance=args.min_relevance,
                image_weight=args.image_weight,
                negative_weight=args.negative_weight,
                where=where,
                sort=args.sort or "score",
            )
    except BadSample as e:
        raise ValueError(f"{args.image}: {e.reason}") from None
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print(
            "no results"
            + (f" with relevance >= {args.min_relevance}" if args.min_relevance else "")
        )
    where_empty = where.empty and (args.sort or "score") == "score"
    for rank, h in enumerate(hits, 1):
        where = h.path or h.key
        caption = f"  {h.caption}" if h.caption else ""
        relevance = f"  {h.relevance:.2f}" if h.relevance is not None else ""
        when = f"  {h.taken[:10]}" if h.taken and not where_empty else ""
        print(f"{rank:>3}  {h.score:.3f}{relevance}{when}  {where}{caption}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    add_embed(subparsers)
    add_index(subparsers)
    add_search(subparsers)


__all__: list[Any] = ["add_parser", "parse_size"]
