"""``cliplab finetune FOLDER --model M --out DIR [--minutes N]``: fine-tune a pretrained CLIP
on a folder of class folders (or a ``path,label`` table), the FLYP way, with a validation
split the command holds out itself (:mod:`cliplab.train.labelled`)."""

from __future__ import annotations

import argparse

from cliplab.cli.common import add_model, add_out, add_set, number_list


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from cliplab.train.labelled import RECIPE

    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained CLIP on labelled images (class folders or a path,label table)",
        description=(
            "Hold out 10%% of each class, measure zero-shot accuracy on it, fine-tune with the "
            "contrastive loss and class names in prompt templates as captions (FLYP) for each "
            "candidate learning rate, and keep the best on the held-out split: OUT/model, "
            "OUT/report.md."
        ),
    )
    parser.add_argument(
        "folder",
        help="a folder with one subfolder per class, or a CSV/TSV/"
        "JSONL/Parquet table of path,label rows",
    )
    add_model(parser)
    add_out(parser)
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="time budget for all the candidates together (default 10)",
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="steps per candidate instead of a time budget"
    )
    parser.add_argument(
        "--lr",
        type=number_list(float, 1e-12, what="positive learning rates"),
        default=RECIPE["lrs"],
        help="candidate learning rates, comma-separated (default: "
        + ",".join(f"{v:g}" for v in RECIPE["lrs"])
        + ")",
    )
    parser.add_argument(
        "--lock-image",
        action="store_true",
        help="lock the image tower (LiT): only the text side trains",
    )
    parser.add_argument(
        "--templates",
        default=RECIPE["templates"],
        help="prompt templates: a bundled set or a JSON file (default imagenet80, OpenAI's 80)",
    )
    parser.add_argument(
        "--classnames", default="", help="a JSON object or CSV of folder/label -> class name"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    add_set(parser, sections=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.train.labelled import finetune_folder

    if args.minutes <= 0 and args.steps <= 0:
        raise ValueError("give --minutes or --steps a positive value")
    report = finetune_folder(
        args.folder,
        args.model,
        args.out,
        minutes=args.minutes,
        steps=args.steps,
        lrs=args.lr,
        lock_image=args.lock_image,
        templates=args.templates,
        classnames=args.classnames,
        seed=args.seed,
        device=args.device,
        overrides=args.settings,
    )
    print(
        f"validation top-1 {report['val_top1_before']} -> {report['val_top1_after']} "
        f"(lr {report['chosen_lr']:g}); model: {report['model_dir']}; "
        f"report: {args.out / 'report.md'}"
    )
    return 0
