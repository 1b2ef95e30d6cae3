"""What :func:`cliplab.runtime.reuse_freed_memory` (called by the command line at start) saves:
the image tower encoding batches on a CPU with glibc's default malloc and with freed blocks
kept for reuse, each in its own fresh process, the two taking turns round by round so that
other work on the machine slows both alike. ::

    python benchmarks/bench_malloc.py [--model ViT-B-32] [--batch 64] [--batches 6] [--rounds 3]

Prints, per setting, the median wall time, CPU time (user + system), system time and minor
page faults of the timed batches (after one warm-up batch), and the ratio; writes
``benchmarks/results/malloc.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import machine, write


def child(args: argparse.Namespace) -> None:
    from cliplab.factory import create_model
    from cliplab.runtime import reuse_freed_memory

    if args.child == "reuse" and not reuse_freed_memory():
        raise SystemExit("reuse_freed_memory() did not take on this machine")
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    size = model.image_size
    pixels = torch.randn(args.batch, 3, size, size)
    with torch.inference_mode():
        model.encode_image(pixels)  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        for _ in range(args.batches):
            model.encode_image(pixels)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall_s": wall,
        "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "system_s": after.ru_stime - before.ru_stime,
        "minor_faults": after.ru_minflt - before.ru_minflt,
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ViT-B-32", help="a preset (random weights)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=6, help="timed batches per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=["default", "reuse"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    runs: dict[str, list[dict]] = {"default": [], "reuse": []}
    for r in range(args.rounds):
        for setting in runs:
            cmd = [sys.executable, __file__, "--child", setting, "--model", args.model,
                   "--batch", str(args.batch), "--batches", str(args.batches)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[setting].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1} {setting:8s} {runs[setting][-1]}", flush=True)
    medians = {
        setting: {k: statistics.median(run[k] for run in rows) for k in rows[0]}
        for setting, rows in runs.items()
    }
    paired = [d["wall_s"] / u["wall_s"] for d, u in zip(runs["default"], runs["reuse"])]
    images = args.batch * args.batches
    for setting, m in medians.items():
        print(f"{setting:8s} {images / m['wall_s']:.2f} images/s, wall {m['wall_s']:.2f} s, "
              f"cpu {m['cpu_s']:.2f} s, system {m['system_s']:.2f} s, "
              f"{m['minor_faults']:.0f} page faults")  # fmt: skip
    print(f"speed-up {statistics.median(paired):.3f}x (median of {len(paired)} paired rounds, "
          f"each {min(paired):.3f}-{max(paired):.3f})")  # fmt: skip
    write("malloc.json", {
        "machine": machine(),
        "command": "python benchmarks/bench_malloc.py " + " ".join(sys.argv[1:]),
        "model": f"{args.model} (random weights), float32, batch {args.batch}, "
                 f"{args.batches} batches per process after a warm-up",
        "median": medians,
        "images_per_s": {s: images / m["wall_s"] for s, m in medians.items()},
        "paired_speedups": paired,
        "runs": runs,
    })  # fmt: skip


if __name__ == "__main__":
    main()
