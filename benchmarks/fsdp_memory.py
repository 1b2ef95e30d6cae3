"""Parameter + gradient + AdamW-state memory one rank holds, DDP (replicated) against FSDP2
(each tensor sharded on dim 0, padded as ``fully_shard`` pads), computed exactly from the
model's parameter shapes on the meta device (nothing is allocated).

    python benchmarks/fsdp_memory.py [--model ViT-L/14] [--ranks 8 64]

Results: benchmarks/results/fsdp-memory.json
"""

from __future__ import annotations

import argparse

import torch
from common import RESULTS, machine

from cliplab.factory import create_model
from cliplab.fileio import write_json
from cliplab.train.parallelize import sharded_bytes_per_rank

GiB = 1 << 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-L/14")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    with torch.device("meta"):
        model = create_model(args.model)
    rows = []
    print(f"{args.model}: fp32 parameters, gradients and AdamW moments per rank")
    print(f"{'ranks':>6} {'DDP GiB':>9} {'FSDP GiB':>9} {'params':>8} {'optimizer':>10}")
    for n in args.ranks:
        m = sharded_bytes_per_rank(model, n)
        rows.append({"ranks": n, **m})
        print(
            f"{n:>6} {m['ddp_bytes'] / GiB:>9.2f} {m['fsdp_bytes'] / GiB:>9.3f} "
            f"{m['fsdp_param_bytes'] / GiB:>8.3f} {m['fsdp_optimizer_bytes'] / GiB:>10.3f}"
        )
    write_json(
        RESULTS / "fsdp-memory.json",
        {
            "model": args.model,
            "note": "fp32 master parameters + fp32 gradients + 2 fp32 AdamW moments; "
            "activations and the gathered units in flight come on top",
            "rows": rows,
            "machine": machine(),
            "command": "python benchmarks/fsdp_memory.py",
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
