"""Proof that training works: ``configs/synthetic-tiny.toml`` (tiny-vit, 400 steps of batch
128 on the built-in synthetic shapes) and its held-out text->image retrieval against chance.

    python benchmarks/proof_synthetic.py [--output DIR] [--set section.key=value ...]

Writes benchmarks/results/synthetic_tiny_proof.json: the final evaluation on 200 held-out
(image, caption) pairs of the synthetic ``val`` split (chance top-1 = 1/200), the loss
curve's ends, steps/s and the wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "synthetic_tiny_proof.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "synthetic-tiny.toml"))
    parser.add_argument("--out", help="run directory (default: a fresh temporary one)")
    parser.add_argument("--set", dest="settings", action="append", default=[])
    args = parser.parse_args()

    import torch

    from cliplab.cli import main as cliplab_main
    from cliplab.train.logs import read_metrics

    output = args.out or tempfile.mkdtemp(prefix="cliplab-proof-")
    argv = ["train", args.config, "--out", output]
    for setting in args.settings:
        argv += ["--set", setting]
    stdout = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        status = cliplab_main(argv)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"training failed with status {status}")
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    train = [r for r in read_metrics(Path(output) / "metrics.jsonl") if r["kind"] == "train"]
    evals = [r for r in read_metrics(Path(output) / "metrics.jsonl") if r["kind"] == "eval"]
    final = summary["eval"]
    config = json.loads((Path(output) / "config.json").read_text())
    pairs = config["eval"]["synthetic_pairs"]
    report = {
        "command": " ".join(["python -m cliplab", *argv]).replace(str(ROOT) + "/", ""),
        "config": os.path.relpath(args.config, ROOT),
        "overrides": args.settings,
        "steps": summary["step"],
        "held_out_pairs": pairs,
        "text_to_image_top1": final["synthetic_text_to_image_R@1"],
        "text_to_image_top5": final["synthetic_text_to_image_R@5"],
        "image_to_text_top1": final["synthetic_image_to_text_R@1"],
        "chance_top1": 1 / pairs,
        "chance_top5": 5 / pairs,
        "eval_curve": [
            {"step": r["step"], "text_to_image_top1": r["synthetic_text_to_image_R@1"]}
            for r in evals
        ],
        "first_loss": train[0]["loss"],
        "last_loss": train[-1]["loss"],
        "steps_per_s": round(summary["steps_per_s"], 2),
        "wall_s": round(wall, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
