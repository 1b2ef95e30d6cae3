"""Pairs per second of the demo recipe's training step, data loading included, and the data
path's own cost per batch.

The step figure is the one ``cliplab demo`` fits its step count by
(``cliplab.demo.train.time_steps``: 8 untimed steps, then the median of 16), taken at the
recipe's full image size and in its low-resolution phase. The data figure is the mean time
the recipe's loader (``cliplab.train.data.build_loader``) takes per batch over
``--batches`` batches, without training: the part of a step that the data path decides
(the model's step is the same code whichever path feeds it). To compare two versions of the code on one machine, run them
alternately, one checkout on ``PYTHONPATH`` each (the data directory is shared)::

    git worktree add /tmp/before <commit>
    for i in 1 2 3 4 5 6; do
        PYTHONPATH=/tmp/before/src python benchmarks/bench_recipe_step.py --data-only --label before
        python benchmarks/bench_recipe_step.py --data-only --label after
    done

Each run appends a row to ``benchmarks/results/recipe-step.jsonl`` (machine, label, commit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _cpu() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=HERE.parent / "data")
    p.add_argument("--label", default="")
    p.add_argument("--batches", type=int, default=150)
    p.add_argument(
        "--data-only", action="store_true", help="time the data path only (no training steps)"
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "recipe-step.jsonl")
    args = p.parse_args()
    import cliplab
    from cliplab.demo.plan import training_config
    from cliplab.demo.train import time_steps
    from cliplab.train.data import build_loader

    code = Path(cliplab.__file__).resolve().parents[2]
    commit = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    row = {"label": args.label, "commit": commit, "code": str(code)}
    with tempfile.TemporaryDirectory() as tmp:
        config = training_config(None, args.data, Path(tmp) / "run", ["eval.interval=0"])
        full = config.replace(train=dataclasses.replace(config.train, low_res_size=0))
        size = 32  # the recipe's image size
        loader = build_loader(full, size, 32, full.data.batch_size)
        batches = iter(loader)
        next(batches)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.batches):
            next(batches)
        row["data_ms_per_batch"] = round(1000 * (time.perf_counter() - start) / args.batches, 1)
        row["data_cpu_ms_per_batch"] = round(1000 * (time.process_time() - cpu) / args.batches, 1)
        configs = () if args.data_only else (("full_size", full), ("low_res", config))
        for name, c in configs:
            start = time.perf_counter()
            row[f"{name}_pairs_per_s"] = round(time_steps(c), 1)
            row[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
    row["machine"] = {  # not common.machine(): an older checkout on PYTHONPATH lacks its imports
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "machine"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
