"""``cliplab classify IMAGE... --labels "cat,dog,car"``: zero-shot classification, the everyday use.

Prints, for each image, the most probable labels with their probabilities: a softmax over the
model's scaled cosine similarities between the image and each label's prompts, or, for a
model with a logit bias (SigLIP), each label's own sigmoid (they need not sum to 1). A label may
list members after ``=``, separated by ``|`` (``--labels "animal=cat|dog|horse,vehicle=car|bus"``):
it then scores as the best of its own name and its members' (hierarchical labels: a coarse
class is recognised through the words for what it contains). An image
that cannot be read (missing, truncated, not an image, a decompression bomb) is reported
with its reason on stderr (and in ``--json``) while the others are classified; the exit
status is then 1 (2 when none could be read).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cliplab.cli.common import add_device, add_model, add_runtime, add_set, load_model
from cliplab.zeroshot import classify_images, load_templates, parse_labels

#: The model used when ``--model`` is not given (OpenAI's weights, fetched on first use).
DEFAULT_MODEL = "ViT-B-32"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="zero-shot classify images among labels you give",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument(
        "--labels",
        required=True,
        help='comma-separated class names, e.g. "cat,dog,car"; a label may list members: '
        '"animal=cat|dog,vehicle=car|bus"',
    )
    add_model(
        parser,
        required=False,
        default=os.environ.get("CLIPLAB_MODEL", DEFAULT_MODEL),
        help=f"checkpoint (any format cliplab.load reads), OpenAI model name or "
        f"random:<preset> (default: $CLIPLAB_MODEL or {DEFAULT_MODEL})",
    )
    add_set(parser)
    parser.add_argument(
        "--templates",
        default="photo",
        help="template set: bundled name (photo, imagenet80, ...) or JSON file (default: photo)",
    )
    parser.add_argument("--top", type=int, default=5, help="labels shown per image")
    add_device(parser)
    add_runtime(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def read_images(paths: list[Path]) -> tuple[list[tuple[Path, Any]], list[tuple[Path, str]]]:
    """(readable images with their paths, unreadable paths with the reason): a truncated
    file, a non-image or a decompression bomb is reported, never a traceback."""
    from cliplab.data.images import open_image
    from cliplab.data.stream import BadSample

    good, bad = [], []
    for path in paths:
        try:
            good.append((path, open_image(path)))
        except BadSample as e:
            bad.append((path, e.reason))
    return good, bad


def run(args: argparse.Namespace) -> int:
    labels, members = parse_labels(args.labels)
    good, bad = read_images(list(args.images))
    rows: list[dict[str, Any]] = []
    if good:
        model, preprocess = load_model(args)
        images = [image for _, image in good]
        probs = classify_images(
            model,
            preprocess,
            images,
            labels,
            templates=load_templates(args.templates),
            members=members,
        )
        top = max(1, min(args.top, len(labels)))
        for (path, _), p in zip(good, probs):
            values, indices = p.topk(top)
            pairs = [[labels[i], float(v)] for v, i in zip(values, indices)]
            rows.append({"image": str(path), "top": pairs})
    errors = [{"image": str(path), "error": reason} for path, reason in bad]
    for e in errors:
        print(f"cliplab classify: {e['image']}: {e['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows + errors, indent=2))
    else:
        width = max(len(label) for label in labels)
        for row in rows:
            print(row["image"])
            for label, prob in row["top"]:
                print(f"  {label:<{width}}  {100 * prob:6.2f}%")
    if not good:
        raise ValueError(f"none of the {len(bad)} image(s) could be read")
    return 1 if bad else 0
