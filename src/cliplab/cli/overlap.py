"""``cliplab data overlap``: do evaluation images also sit in the training data, and does that
inflate the zero-shot score? (The paper's section 5, :mod:`cliplab.evaluation.overlap`.)

    cliplab data overlap --train data/shards/emoji-twitter data/shards/emoji-noto-v1 \\
        --eval data/eval/emoji-google data/eval/emoji-apple --model runs/demo/train/model
    cliplab data overlap --train pictures/ --eval data/eval/tuxpaint-photos \\
        --model runs/demo/train/model --detector ViT-B-32 --precision 0.995 --out runs/overlap

Writes OUT/overlap.json, OUT/overlap.md and OUT/overlap.png and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cliplab.cli.common import add_device


def add_overlap(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "overlap",
        help="evaluation images duplicated in the training data, and zero-shot on All/Clean/Overlap",
        description="For each evaluation image, its most similar training image by the "
        "detector's image embeddings (cosine); the image overlaps when that similarity reaches "
        "a threshold chosen on synthetic near-duplicates (JPEG re-encodes, resizes, crops, "
        "colour shifts, small overlays) of the sets' own images against their nearest "
        "different training images: the lowest threshold whose precision reaches --precision. "
        "Per set: the share of overlap, zero-shot top-1 on All, Clean and Overlap images, and "
        "All - Clean with a bootstrap 95% interval (the paper's section 5).",
    )
    parser.add_argument("--train", nargs="+", required=True, metavar="SOURCE",
                        help="training sources: folders of images, WebDataset shards (a folder "
                        "of .tar files or a pattern), CSV/Parquet manifests")  # fmt: skip
    parser.add_argument("--eval", nargs="+", required=True, metavar="SET", dest="evalsets",
                        help="classification sets (e.g. data/eval/emoji-google; any layout "
                        "`cliplab eval` reads)")  # fmt: skip
    parser.add_argument("--model", required=True,
                        help="the model whose zero-shot scores are split (anything cliplab.load "
                        "reads)")  # fmt: skip
    parser.add_argument("--detector", default=None,
                        help="the duplicate detector's image model (default: --model)")  # fmt: skip
    parser.add_argument("--precision", type=float, default=0.99,
                        help="precision the threshold must reach on the synthetic duplicates "
                        "(default 0.99)")  # fmt: skip
    parser.add_argument("--threshold", type=float, default=None,
                        help="a cosine threshold of your own (its precision is still measured)")  # fmt: skip
    parser.add_argument("--sample", type=int, default=100,
                        help="images per set edited to choose the threshold (default 100)")  # fmt: skip
    parser.add_argument("--examples", type=int, default=5,
                        help="most similar pairs listed per set (default 5)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, edits, bootstrap")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--out", "-o", type=Path, default=Path("runs/overlap"),
                        help="output directory (default runs/overlap)")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="feature cache (default $CLIPLAB_CACHE or ~/.cache/cliplab/eval)")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="compute every feature afresh")
    add_device(parser)
    return parser


def run_overlap(args: argparse.Namespace) -> int:
    import cliplab
    from cliplab.cli.evaluate import default_cache_dir
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.overlap import overlap_analysis, write_overlap

    if not 0 < args.precision <= 1:
        raise ValueError(f"--precision must be in (0, 1], got {args.precision}")
    if args.sample < 1 or args.batch_size < 1:
        raise ValueError("--sample and --batch-size must be at least 1")
    missing = [s for s in args.evalsets if not Path(s).exists()]
    if missing:  # before loading any model
        raise ValueError(f"evaluation set not found: {', '.join(missing)}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())

    def store(spec: str) -> FeatureStore:
        model, preprocess = cliplab.load(spec, device=args.device)
        return FeatureStore(model, preprocess, cache_dir=cache, batch_size=args.batch_size,
                            device=args.device, progress=sys.stderr.isatty())  # fmt: skip

    evaluated = store(args.model)
    detector = store(args.detector) if args.detector and args.detector != args.model else None
    report = overlap_analysis(
        args.train,
        args.evalsets,
        evaluated,
        detector,
        precision=args.precision,
        threshold=args.threshold,
        sample=args.sample,
        examples=max(0, args.examples),
        seed=args.seed,
        model_name=args.model,
        detector_name=args.detector or args.model,
        log=log,
    )
    written = write_overlap(report, args.out)
    print(report.table())
    for s in report.sets:
        for e in s.examples[:3]:
            print(f"{s.dataset}: {e['eval_key']} ~ {e['train_key']} ({e['train_source']}) "
                  f"{e['similarity']:.4f}" + (" duplicate" if e["duplicate"] else ""))  # fmt: skip
    print(f"{report.seconds:.0f} s; wrote " + ", ".join(str(p) for p in written.values()))
    c = report.calibration
    if not c["reached"] and c["method"] != "given":
        print(f"cliplab data overlap: no threshold reached precision {args.precision} on the "
              "synthetic duplicates; the best F1 was used", file=sys.stderr)  # fmt: skip
    return 0


__all__ = ["add_overlap", "run_overlap"]
