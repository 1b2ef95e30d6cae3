"""A fine-tuning step with the image tower locked (LiT), cliplab against OpenCLIP's
``--lock-image`` step (``lock_image_tower()``, AdamW over the trainable parameters,
``ClipLoss``) on the identical architecture, batch and captions, at fp32 and at bf16
autocast, in one run; and what locking saves: trainable parameters, optimiser state and
gradient memory, unlocked vs locked.

    python benchmarks/bench_finetune.py                  # ViT-B-32, batch 64
    python benchmarks/bench_finetune.py --model demo --batch 256

Writes ``benchmarks/results/finetune.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch
from bench_train import open_clip_rate, trainer_config
from common import machine, model_config, rate, sample_inputs, table, write

from cliplab.runtime import cpu_has_bf16  # noqa: E402
from cliplab.train import Config, Trainer  # noqa: E402


def locked_config(name: str, config: Any, n: int, lock: bool, **train: Any) -> Config:
    base = trainer_config(name, config, n, **train).to_dict()
    base["model"]["lock_image"] = lock
    return Config.from_dict(base)


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )


def cliplab_step(name: str, config: Any, n: int, repeat: int, lock: bool, precision: str):
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(locked_config(name, config, n, lock, precision=precision), output=out)
        images, tokens = sample_inputs(config, n)
        value = rate(lambda: trainer.train_step(images, tokens), n, repeat, 1)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        return value, trainable, _state_bytes(trainer.optimizer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="timed steps per mode")
    args = p.parse_args()
    torch.manual_seed(0)
    config = model_config(args.model)
    n = args.batch
    rows: list[dict[str, Any]] = []
    precisions = ["fp32"] + (["bf16"] if cpu_has_bf16() or torch.cuda.is_available() else [])
    if len(precisions) == 1:
        print("  (no bf16 instructions on this CPU: bf16 autocast would be emulated; fp32 only)")
    for precision in precisions:
        theirs = open_clip_rate(config, n, args.repeat, precision == "bf16", lock_image=True)
        ours, _, _ = cliplab_step(args.model, config, n, args.repeat, True, precision)
        for impl, value in (("openclip", theirs), ("cliplab", ours)):
            rows.append(
                {
                    "model": args.model,
                    "impl": impl,
                    "mode": f"{precision}, image tower locked",
                    "samples_per_s": value,
                    "vs_openclip": value / theirs,
                }
            )
            print(f"  {impl:8s} {precision} locked {value:8.2f} samples/s", flush=True)
    memory = []
    for lock in (False, True):
        value, trainable, state = cliplab_step(args.model, config, n, 1, lock, "fp32")
        memory.append(
            {
                "image tower": "locked" if lock else "trained",
                "trainable_params_m": trainable / 1e6,
                "optimizer_state_mb": state / 2**20,
                "gradient_mb": trainable * 4 / 2**20,
                "samples_per_s_fp32": value,
            }
        )
    print(table(rows, ["model", "impl", "mode", "samples_per_s", "vs_openclip"]))
    print(table(memory, list(memory[0])))
    payload = {"machine": machine(), "batch": n, "rows": rows, "memory": memory}
    print(f"wrote {write('finetune.json', payload)}")


if __name__ == "__main__":
    main()
