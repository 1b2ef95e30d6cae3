"""Training speed side by side: cliplab's step (fp32, bf16 autocast, bf16 + inductor, and
the levers: patch dropout, SigLIP loss, low resolution) against OpenCLIP's model, ClipLoss
and AdamW on the identical architecture, batch and captions, at fp32 and bf16, in one run.
With ``--accuracy`` it also trains the demo recipe with each lever for the same minutes as
the plain recipe and measures zero-shot top-1 on the demo's evaluation sets.

    python benchmarks/bench_train.py                       # throughput, demo model and ViT-B/32
    python benchmarks/bench_train.py --models demo --accuracy --data data

Writes ``benchmarks/results/train.json`` (and ``train-levers.json`` with ``--accuracy``).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import (
    ROOT,
    machine,
    model_config,
    open_clip_model,
    rate,
    refs,
    sample_inputs,
    table,
    train_and_score,
    write,
)

import cliplab  # noqa: E402
from cliplab.demo.plan import ZEROSHOT_SETS  # noqa: E402
from cliplab.train import Config, Trainer  # noqa: E402

BATCH = {"demo": 256, "ViT-B-32": 64}
LEVERS = {  # the levers, each on top of the faster of fp32 and bf16 for the model
    "patch dropout 0.5": {"patch_dropout": 0.5},
    "siglip loss": {"loss": "siglip"},
    "low resolution (~half size)": {"low_res_size": "half", "low_res_until": 1.0},
}


def trainer_config(name: str, config: cliplab.CLIPConfig, n: int, **train: Any) -> Config:
    from dataclasses import asdict

    settings: dict[str, Any] = {"embed_dim": config.embed_dim}
    patch_dropout = train.pop("patch_dropout", 0.0)  # a model setting
    settings["vision"] = {k: v for k, v in asdict(config.vision).items() if k != "kind"}
    settings["text"] = {k: v for k, v in asdict(config.text).items() if k != "kind"}
    settings["vision"]["patch_dropout"] = patch_dropout
    if train.get("low_res_size") == "half":  # the multiple of the patch nearest half size
        patch = config.vision.patch_size
        train["low_res_size"] = max(patch, round(config.vision.image_size / 2 / patch) * patch)
    return Config.from_dict(
        {
            "model": {"name": "tiny-vit", **settings},
            "data": {"batch_size": n, "sources": [{"kind": "synthetic", "num_samples": 64}]},
            "optim": {"lr": 1e-4, "warmup_steps": 1, "weight_decay": 0.1},
            "train": {"steps": 100, **train},
            "log": {"tensorboard": False, "progress": False, "plots": False},
        }
    )


def cliplab_rate(name: str, config, n: int, repeat: int, **train: Any) -> float:
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(trainer_config(name, config, n, **train), output=out)
        images, tokens = sample_inputs(config, n)
        warmup = 2 if train.get("compile") else 1
        return rate(lambda: trainer.train_step(images, tokens), n, repeat, warmup)


def open_clip_rate(config, n: int, repeat: int, bf16: bool, lock_image: bool = False) -> float:
    """OpenCLIP's training step (its model, ClipLoss, AdamW over the trainable parameters);
    ``lock_image``: its ``--lock-image`` path (``lock_image_tower()``)."""
    oc = refs.open_clip()
    model = open_clip_model(config).train()
    if lock_image:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=False)
    loss_fn = oc.loss.ClipLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    images, tokens = sample_inputs(config, n)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            image_features, text_features, scale = model(images, tokens)
            loss = loss_fn(image_features.float(), text_features.float(), scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return rate(step, n, repeat)


def throughput(name: str, repeat: int, compile_: bool) -> list[dict[str, Any]]:
    config = model_config(name)
    n = BATCH.get(name, 64)
    params = sum(p.numel() for p in cliplab.CLIP(config).parameters()) / 1e6
    print(f"== {name}: {params:.1f}M parameters, batch {n}", flush=True)
    rows: list[dict[str, Any]] = []

    def add(impl: str, mode: str, value: float) -> None:
        rows.append({"model": name, "impl": impl, "mode": mode, "samples_per_s": value})
        print(f"  {impl:8s} {mode:32s} {value:8.1f} samples/s", flush=True)

    add("openclip", "fp32", open_clip_rate(config, n, repeat, bf16=False))
    add("openclip", "bf16", open_clip_rate(config, n, repeat, bf16=True))
    add("cliplab", "fp32", cliplab_rate(name, config, n, repeat, precision="fp32"))
    add("cliplab", "bf16", cliplab_rate(name, config, n, repeat, precision="bf16"))
    mine = {r["mode"]: r["samples_per_s"] for r in rows if r["impl"] == "cliplab"}
    best = max(mine, key=mine.get)  # tiny models: autocast costs more than bf16 saves
    if compile_:
        add(
            "cliplab",
            f"{best} + compile (inductor)",
            cliplab_rate(name, config, n, repeat, precision=best, compile=True),
        )
    for lever, settings in LEVERS.items():
        value = cliplab_rate(name, config, n, repeat, precision=best, **settings)
        add("cliplab", f"{best} + {lever}", value)
    oc = {r["mode"]: r["samples_per_s"] for r in rows if r["impl"] == "openclip"}
    for r in rows:
        r["vs_openclip_fp32"] = r["samples_per_s"] / oc["fp32"]
        same = r["mode"].split(" ")[0]
        r["vs_openclip_same_precision"] = r["samples_per_s"] / oc[same]
    return rows


# -- accuracy for the same minutes ---------------------------------------------------------


def recipe_runs(data: Path, rows: list[dict[str, Any]], out: Path, seeds: list[int]) -> list[dict]:
    """The demo recipe, plain (fp32) and with each lever, with the steps scaled by the
    lever's measured speed so every run takes the plain recipe's minutes."""
    from cliplab.train import load_config

    speed = {
        r["mode"]: r["samples_per_s"]
        for r in rows
        if r["model"] == "demo" and r["impl"] == "cliplab"
    }
    best = "bf16" if speed["bf16"] > speed["fp32"] else "fp32"
    variants = {"plain recipe (fp32)": ("fp32", {}), "bf16": ("bf16", {})}
    variants |= {f"{best} + {k}": (f"{best} + {k}", v) for k, v in LEVERS.items()}
    base = load_config(ROOT / "src" / "cliplab" / "demo" / "recipe.toml")
    results = []
    for label, (mode, settings) in variants.items():
        for seed in seeds:
            steps = round(base.train.steps * speed[mode] / speed["fp32"])
            train = {**settings, "precision": mode.split(" ")[0], "seed": seed}
            if train.get("low_res_size") == "half":
                train["low_res_size"] = 16
                train["low_res_until"] = 0.8  # CLIPA: the last steps at full size
            sets = [f"train.{k}={v}" for k, v in train.items()] + [f"train.steps={steps}"]
            print(f"== {label}, seed {seed}: {steps} steps", flush=True)
            output = out / f"{label.replace(' ', '-')}-seed{seed}"
            row = {"variant": label, "seed": seed}
            row |= train_and_score(sets, data, output, list(ZEROSHOT_SETS))
            print(
                "  "
                + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                ),
                flush=True,
            )
            results.append(row)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="demo,ViT-B-32")
    p.add_argument("--repeat", type=int, default=4, help="timed steps per mode")
    p.add_argument("--no-compile", action="store_true", help="skip the inductor mode")
    p.add_argument("--accuracy", action="store_true", help="train the demo recipe per lever")
    p.add_argument("--data", type=Path, default=ROOT / "data", help="the demo's data directory")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the recipe runs")
    p.add_argument("--runs", type=Path, default=None, help="where the recipe runs go")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        rows += throughput(name, args.repeat, not args.no_compile)
    columns = [
        "model",
        "impl",
        "mode",
        "samples_per_s",
        "vs_openclip_fp32",
        "vs_openclip_same_precision",
    ]
    print(table(rows, columns))
    info = machine()
    print(f"wrote {write('train.json', {'machine': info, 'batch': BATCH, 'rows': rows})}")
    if args.accuracy:
        runs = args.runs or Path(tempfile.mkdtemp(prefix="cliplab-levers-"))
        seeds = [int(s) for s in args.seeds.split(",")]
        results = recipe_runs(args.data, rows, runs, seeds)
        sets = list(ZEROSHOT_SETS)
        print(table(results, ["variant", "seed", "steps", "minutes", *sets]))
        payload = {"machine": info, "throughput": rows, "runs": results}
        print(f"wrote {write('train-levers.json', payload)}")


if __name__ == "__main__":
    main()
