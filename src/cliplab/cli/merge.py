"""``cliplab merge A B --alpha 0.3 --out C``: weight-space ensembles (WiSE-FT).

``--alpha 0,0.25,0.5,0.75,1`` writes one model per alpha (``C/alpha-0.25``...); with
``--eval TASK [SHIFTED...]`` each is classified zero-shot on the sets (the first is the
fine-tuning task, the others its distribution shifts), and ``C/wise-ft.json`` and
``C/wise-ft.png`` (task accuracy against accuracy under shift) are written.
"""

from __future__ import annotations

import argparse
import json

from cliplab.checkpoints.api import save
from cliplab.checkpoints.merge import interpolate, read_pair
from cliplab.cli.common import add_device, add_out, add_set, model_settings, number_list


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="interpolate two checkpoints of one architecture (WiSE-FT)",
        description=(
            "Write (1 - alpha) A + alpha B for each alpha: A is usually the zero-shot model and "
            "B its fine-tune. Any format cliplab.load reads, or pretrained names. With --eval, "
            "classify each zero-shot and plot task accuracy against accuracy under shift."
        ),
    )
    parser.add_argument("a", help="the first checkpoint (alpha = 0), e.g. the zero-shot model")
    parser.add_argument("b", help="the second checkpoint (alpha = 1), e.g. its fine-tune")
    parser.add_argument(
        "--alpha",
        type=number_list(float, 0.0, 1.0, "alphas in [0, 1]"),
        default=(0.5,),
        help="one alpha or a comma list (default 0.5)",
    )
    add_out(parser, help="output: a model directory (one alpha) or a folder of them")
    parser.add_argument(
        "--eval",
        nargs="+",
        default=[],
        metavar="SET",
        help="classification sets (paths, or names under --data-dir/eval): the fine-tuning "
        "task first, then its shifts",
    )
    parser.add_argument("--data-dir", default="data", help="where named sets are (default: data)")
    parser.add_argument("--templates", default=None, help="prompt templates (default: each set's)")
    parser.add_argument("--batch-size", type=int, default=256)
    add_set(parser)
    add_device(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.data.evalsets import load_classification
    from cliplab.evaluation.training import resolve_evalset
    from cliplab.evaluation.wiseft import curve, plot_curve

    sets = [load_classification(resolve_evalset(s, args.data_dir)) for s in args.eval]
    inputs = read_pair(args.a, args.b, **model_settings(args))
    several = len(args.alpha) > 1
    for alpha in args.alpha:
        path = args.out / f"alpha-{alpha:g}" if several else args.out
        save(interpolate(inputs, alpha), path, inputs.preprocess)
        print(f"alpha {alpha:g}: wrote {path}")
    if not sets:
        return 0
    rows = curve(
        inputs,
        args.alpha,
        sets[0],
        sets[1:],
        templates=args.templates,
        batch_size=args.batch_size,
        device=args.device,
        progress=print,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"a": str(args.a), "b": str(args.b), "task": sets[0].name, "rows": rows}
    (args.out / "wise-ft.json").write_text(json.dumps(record, indent=2) + "\n")
    if sets[1:]:
        plot = plot_curve({f"{args.b}": rows}, args.out / "wise-ft.png")
        print(f"plot: {plot}")
    print(f"results: {args.out / 'wise-ft.json'}")
    return 0
