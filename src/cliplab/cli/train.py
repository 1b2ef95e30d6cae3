"""``cliplab train [CONFIG.toml] [--set section.key=value ...] [--out DIR] [--device D]``.

Runs one process, or one rank under ``torchrun --nproc_per_node N -m cliplab train ...``.
Re-running the same command with the same output directory resumes from its newest
checkpoint. Exit status: 0 done, 2 bad configuration, 3 stopped on non-finite values,
143 stopped by SIGTERM after writing a checkpoint (re-run to resume).
"""

from __future__ import annotations

import argparse
import json
import sys

from cliplab.cli.common import add_device, add_set


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="contrastive pre-training (one CPU to many GPUs with torchrun)",
        description=(
            "Train a CLIP model from a TOML config (see configs/). Settings can be changed with "
            "--set section.key=value (e.g. --set train.steps=500 --set optim.lr=1e-3); a bare "
            "key is a model setting (--set activation=gelu). An output directory that already "
            "holds checkpoints of the same run is resumed."
        ),
        epilog=(
            "exit status: 0 done; 2 bad configuration; 3 stopped after train.max_nonfinite "
            "non-finite steps in a row; 143 stopped by SIGTERM after writing a checkpoint "
            "(run the same command again to resume)"
        ),
    )
    parser.add_argument("config", nargs="?", help="TOML config file (default: built-in defaults)")
    add_set(parser, sections=True)
    parser.add_argument("--out", "-o", help="output directory (overrides the config's 'output')")
    add_device(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.train import INTERRUPTED_EXIT, NonFiniteError, Trainer, load_config
    from cliplab.train.distributed import init_distributed, shutdown

    settings = list(args.settings)
    if args.out:
        settings.append(f"output={json.dumps(str(args.out))}")
    if args.device:
        settings.append(f"train.device={json.dumps(args.device)}")
    config = load_config(args.config, settings)
    if not config.output:
        raise ValueError("no output directory: pass --out DIR or set 'output' in the config")
    env = init_distributed(config.train.device)
    finished = False
    try:
        trainer = Trainer(config, env=env)
        summary = trainer.fit()
        finished = True
    except NonFiniteError as e:
        print(f"cliplab train: stopped: {e}", file=sys.stderr)
        return 3
    finally:
        shutdown(wait=finished)
    if env.is_main:
        brief = {k: v for k, v in summary.items() if k != "last"}
        print(json.dumps(brief, default=str))
    return INTERRUPTED_EXIT if summary["status"] == "interrupted" else 0
