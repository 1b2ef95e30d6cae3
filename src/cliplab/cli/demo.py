"""``cliplab demo``: the main job end to end (sources, shards, training, evaluation, report);
``cliplab reproduce``: the paper's findings at our scale."""

from __future__ import annotations

import argparse
import sys
import time

from cliplab.cli.common import add_set


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    add_demo_parser(subparsers)
    add_reproduce_parser(subparsers)


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="install real data, train a small CLIP on CPU, evaluate zero-shot transfer",
        description=(
            "Install the real sources (npm and Debian packages), build shards and evaluation "
            "sets, train the demo recipe (about 8.5 minutes on 2 CPU cores), evaluate on held-out "
            "styles, domains and tasks, and write OUT/report.md. Re-running resumes or reuses "
            "what is done."
        ),
    )
    parser.add_argument("--data", default="data", help="data directory (sources/, shards/, eval/)")
    parser.add_argument("--out", default="runs/demo", help="output directory")
    parser.add_argument(
        "--recipe",
        help="training recipe: english (the default), multilingual, a TOML file, or finetune "
        "(fine-tune OUT/train/model on Fashion-MNIST: FLYP, locked image tower, WiSE-FT)",
    )
    add_set(parser, sections=True)
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training budget: train fewer of the recipe's steps where they would take longer "
        "on this machine (default 8.5; 0: the recipe's steps whatever they take)",
    )
    parser.add_argument(
        "--within",
        type=float,
        default=None,
        metavar="MINUTES",
        help="finish the whole run within MINUTES of its start (or of --started): training gets "
        "what is left after the data is ready, less what evaluation takes (`make demo`: 15)",
    )
    parser.add_argument(
        "--started",
        type=float,
        default=None,
        metavar="EPOCH_SECONDS",
        help="when the run began, for --within (`make demo` passes the time it started, before "
        "it created the virtual environment)",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="use the sources already in DATA/sources"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars in evaluation")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.demo.pipeline import run_demo
    from cliplab.demo.report import chance_note, format_table
    from cliplab.demo.train import DEFAULT_MINUTES

    minutes = DEFAULT_MINUTES if args.minutes is None else args.minutes
    if minutes < 0:
        raise ValueError(f"--minutes must be 0 or more, not {minutes}")
    if args.within is not None and args.within <= 0:
        raise ValueError(f"--within must be a positive number of minutes, not {args.within}")
    if args.started is not None and args.within is None:
        raise ValueError("--started goes with --within")
    deadline = None
    if args.within is not None:
        deadline = (args.started if args.started is not None else time.time()) + args.within * 60

    if args.recipe == "finetune":
        return run_finetune(args, minutes, deadline)
    start = time.perf_counter()
    try:
        result = run_demo(
            args.data,
            args.out,
            recipe=args.recipe,
            overrides=args.settings,
            install=not args.no_install,
            progress=not args.quiet,
            minutes=minutes,
            deadline=deadline,
        )
    except RuntimeError as e:  # a source that cannot be installed, a stopped training run
        print(f"cliplab demo: {e}", file=sys.stderr)
        return 1
    print()
    print(format_table(result.rows))
    note = chance_note(result.rows)
    if note:
        print(f"\n{note}")
    elapsed = (time.perf_counter() - start) / 60
    timing = ", ".join(f"{k} {v / 60:.1f} min" for k, v in result.seconds.items())
    print(f"\nreport: {result.report}  model: {result.model}  ({elapsed:.1f} min: {timing})")
    print(f'try: cliplab classify IMAGE --model {result.model} --labels "cat,dog,pizza"')
    if result.search is not None:
        print(f"     cliplab serve {result.search}    (then open http://127.0.0.1:8000/)")
    sys.stdout.flush()
    return 0


def run_finetune(args: argparse.Namespace, minutes: float, deadline: float | None) -> int:
    """``--recipe finetune``: fine-tune the demo's model (trained first if OUT/train/model is
    missing, then with a fresh budget) on Fashion-MNIST (:mod:`cliplab.demo.finetune`)."""
    from pathlib import Path

    from cliplab.demo.finetune import run_finetune_demo
    from cliplab.demo.pipeline import run_demo

    model = Path(args.out) / "train" / "model"
    try:
        if not (model / "config.json").is_file():
            print(f"== {model} is missing: running the demo first (its own 15-minute budget)")
            run_demo(args.data, args.out, install=not args.no_install, progress=not args.quiet,
                     minutes=minutes, deadline=deadline)  # fmt: skip
            deadline = time.time() + 15 * 60 if deadline is not None else None
        result = run_finetune_demo(args.data, Path(args.out) / "finetune", model, deadline=deadline)
    except RuntimeError as e:
        print(f"cliplab demo: {e}", file=sys.stderr)
        return 1
    print(f"\nreport: {Path(args.out) / 'finetune' / 'report.md'} ({result['minutes']:.1f} min)")
    return 0


def add_reproduce_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="the paper's findings at our scale (about 50 minutes on 2 CPU cores)",
        description=(
            "Zero-shot vs few-shot, prompt engineering, robustness, compute and data scaling "
            "with the demo's data and recipe; writes OUT/report.md. Trains the demo model first "
            "if DEMO/train/model is missing; finished runs are reused."
        ),
    )
    parser.add_argument("--data", default="data", help="data directory")
    parser.add_argument("--out", default="runs/reproduce", help="output directory")
    parser.add_argument("--demo", default="runs/demo", help="the demo's output directory")
    parser.add_argument("--recipe", help="training recipe TOML (default: the demo's)")
    add_set(parser, sections=True)
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite OUT/report.md from OUT/results.json; train nothing")  # fmt: skip
    parser.set_defaults(run=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from cliplab.demo.reproduce import run_reproduce as reproduce
    from cliplab.demo.reproduce_report import report_from_results

    if args.report_only:  # a missing or malformed results.json is bad input (exit 2)
        try:
            path = report_from_results(args.out)
        except KeyError as e:
            raise ValueError(f"{args.out}/results.json lacks {e}") from None
        print(f"\nreport: {path}")
        return 0
    try:
        path = reproduce(
            args.data,
            args.out,
            args.demo,
            recipe=args.recipe,
            overrides=args.settings,
            install=not args.no_install,
            progress=not args.quiet,
        )
    except RuntimeError as e:  # a source that cannot be installed, a stopped training run
        print(f"cliplab reproduce: {e}", file=sys.stderr)
        return 1
    print(f"\nreport: {path}")
    return 0
