"""The GPU check: what can only be verified on a CUDA machine, in one run of a few minutes.

1. parity on CUDA: cliplab against OpenCLIP on the same perturbed weights, fp32 (TF32 off)
   and bf16 autocast, with the flash SDPA kernel forced for the bf16 text and image towers;
2. losses on CUDA: chunked vs plain CLIP loss (values and gradients), SigLIP vs its naive
   form; with 2+ GPUs, the distributed losses under NCCL against one process;
3. ViT-B/32 training: bf16 autocast + fused AdamW + torch.compile, the largest batch that
   fits (--batch, x4 up to 16384), samples/s and MFU (FLOPs counted by torch's FlopCounterMode
   over one step, against the GPU's dense bf16 peak);
4. inference: ViT-B/32 images/s and texts/s at fp32 and bf16.

Prints a table and writes ``benchmarks/results/gpu-<name>.json``. ``--dry-run`` runs the same
code on the CPU with a tiny model (the script's own test, no figures worth keeping).

    bash benchmarks/gpu/check.sh            # on the GPU machine
    bash benchmarks/gpu/check.sh --dry-run  # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cliplab  # noqa: E402

#: Dense bf16 tensor-core peaks (TFLOP/s) of common GPUs, by a substring of the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "B200": 2250.0,
}

RESULTS: dict[str, Any] = {"checks": []}


def check(name: str):
    """Run one section; a failure is recorded with its traceback and the others still run."""

    def wrap(fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                detail = fn(*args, **kwargs) or {}
                status = "ok"
            except Exception as e:  # noqa: BLE001 (report every failure, run every check)
                detail = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                status = "FAILED"
                print(detail["traceback"], file=sys.stderr, flush=True)
            seconds = time.perf_counter() - start
            RESULTS["checks"].append(
                {"check": name, "status": status, "seconds": seconds, **detail}
            )
            print(
                f"   {status} in {seconds:.1f}s {json.dumps({k: v for k, v in detail.items() if k != 'traceback'})}",
                flush=True,
            )

        return run

    return wrap


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


# -- 1. parity -----------------------------------------------------------------------------


@check("parity with OpenCLIP on the device (fp32, bf16 autocast, flash SDPA)")
def parity(device: torch.device, dry: bool) -> dict[str, Any]:
    from common import open_clip_model

    import refs
    from cliplab.checkpoints import openai

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = cliplab.get_config("tiny-vit" if dry else "ViT-B-32")
    ref = refs.perturb_(open_clip_model(config), seed=1).to(device).eval()
    ours = cliplab.CLIP(config)
    ours.load_state_dict(openai.from_openai({k: v.cpu() for k, v in ref.state_dict().items()}))
    ours = ours.to(device).eval()
    size = config.vision.image_size
    images = torch.randn(8, 3, size, size, device=device)
    tokens = cliplab.tokenize(["a photo of a dog", "a red car at night", "", "🙂"] * 2).to(device)
    out: dict[str, Any] = {}
    with torch.no_grad():
        out["fp32_image_rel"] = rel(ours.encode_image(images), ref.encode_image(images))
        out["fp32_text_rel"] = rel(ours.encode_text(tokens), ref.encode_text(tokens))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            fp32_i, fp32_t = ours.encode_image(images).float(), ours.encode_text(tokens).float()
            if device.type == "cuda":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    bf_i, bf_t = ours.encode_image(images), ours.encode_text(tokens)
                out["flash_attention"] = True
            else:
                bf_i, bf_t = ours.encode_image(images), ours.encode_text(tokens)
        ref_i, ref_t = ref.encode_image(images), ref.encode_text(tokens)
    out["bf16_image_cosine"] = float(F.cosine_similarity(bf_i.float(), ref_i).min())
    out["bf16_text_cosine"] = float(F.cosine_similarity(bf_t.float(), ref_t).min())
    out["bf16_default_kernel_image_cosine"] = float(F.cosine_similarity(fp32_i, ref_i).min())
    out["bf16_default_kernel_text_cosine"] = float(F.cosine_similarity(fp32_t, ref_t).min())
    assert out["fp32_image_rel"] < 1e-4 and out["fp32_text_rel"] < 1e-4, out
    assert out["bf16_image_cosine"] > 0.99 and out["bf16_text_cosine"] > 0.99, out
    return out


# -- 2. losses -----------------------------------------------------------------------------


@check("losses on the device: chunked == plain, SigLIP == naive; NCCL with 2+ GPUs")
def losses(device: torch.device, dry: bool) -> dict[str, Any]:
    from cliplab.loss import chunked_clip_loss, clip_loss, siglip_loss

    n, d = (64, 32) if dry else (4096, 512)
    g = torch.Generator(device="cpu").manual_seed(0)
    images = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device)
    texts = F.normalize(images.cpu() + torch.randn(n, d, generator=g), dim=-1).to(device)

    def grads(fn, *extra):
        i, t = images.clone().requires_grad_(), texts.clone().requires_grad_()
        loss = fn(i, t, torch.tensor(30.0, device=device), *extra)
        loss.backward()
        return loss.detach(), i.grad, t.grad

    plain = grads(clip_loss)
    chunked = grads(lambda i, t, s: chunked_clip_loss(i, t, s, chunk_size=n // 4))
    out = {
        "chunked_vs_plain_loss": abs(float(plain[0] - chunked[0])),
        "chunked_vs_plain_grad": max(
            float((a - b).abs().max()) for a, b in zip(plain[1:], chunked[1:])
        ),
    }
    bias = torch.tensor(-10.0, device=device)
    small = 48
    i, t = images[:small].double(), texts[:small].double()
    logits = 30.0 * i @ t.t() + bias.double()
    signs = 2 * torch.eye(small, device=device, dtype=torch.double) - 1
    naive = -torch.log(torch.sigmoid(signs * logits)).sum() / small
    out["siglip_vs_naive"] = abs(
        float(siglip_loss(i, t, torch.tensor(30.0, device=device), bias) - naive)
    )
    assert out["chunked_vs_plain_loss"] < 1e-4 and out["chunked_vs_plain_grad"] < 1e-5, out
    assert out["siglip_vs_naive"] < 1e-9, out
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus >= 2:
        import subprocess

        script = Path(__file__).with_name("nccl_losses.py")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc-per-node={min(gpus, 8)}",
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        out["nccl"] = result.stdout.strip().splitlines()[-1:] or result.stderr[-2000:]
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        out["nccl"] = (
            f"skipped: {gpus} GPU(s); NCCL needs one process per GPU (the gloo tests cover the maths)"
        )
    return out


# -- 3. training ---------------------------------------------------------------------------


def _train_setup(config, device, batch: int, compile_: bool):
    from common import sample_inputs

    from cliplab.loss import clip_loss
    from cliplab.train.parallelize import Towers, compile_towers, trim_tokens

    torch.manual_seed(0)
    model = cliplab.CLIP(config).to(device).train()
    towers = compile_towers(Towers(model), model) if compile_ else Towers(model)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, fused=fused
    )
    images, tokens = sample_inputs(config, batch, device)
    tokens = trim_tokens(tokens, compiled=compile_)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            image_features, text_features = towers(images, tokens)
        loss = clip_loss(
            F.normalize(image_features.float(), dim=-1),
            F.normalize(text_features.float(), dim=-1),
            model.logit_scale.exp(),
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return model, towers, step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@check("ViT-B/32 training: bf16 + fused AdamW + compile, largest batch, samples/s and MFU")
def training(
    device: torch.device, dry: bool, batch: int, peak: float | None, steps: int
) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    config = cliplab.get_config("tiny-vit" if dry else "ViT-B-32")
    # FLOPs of one sample's step, counted on an eager step of a small batch
    _, _, probe = _train_setup(config, device, 8, compile_=False)
    with FlopCounterMode(display=False) as counter:
        probe()
    flops_per_sample = counter.get_total_flops() / 8
    del probe
    fits, found = None, {}
    size = batch
    while True:
        try:
            _, _, step = _train_setup(config, device, size, compile_=not dry)
            for _ in range(3):  # compile and warm up
                step()
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                loss = step()
            _sync(device)
            seconds = time.perf_counter() - start
            found[size] = size * steps / seconds
            fits = size
            print(
                f"   batch {size}: {found[size]:.0f} samples/s, loss {float(loss.detach()):.3f}",
                flush=True,
            )
            del step
            if dry or size >= 16384:
                break
            size *= 4
        except torch.OutOfMemoryError:
            print(f"   batch {size}: out of memory", flush=True)
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    best = max(found, key=found.get)
    out: dict[str, Any] = {
        "largest_batch": fits,
        "samples_per_s_by_batch": found,
        "best_batch": best,
        "samples_per_s": found[best],
        "gflops_per_sample": flops_per_sample / 1e9,
        "peak_bf16_tflops": peak,
    }
    if peak:
        out["mfu"] = found[best] * flops_per_sample / (peak * 1e12)
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# -- 4. inference --------------------------------------------------------------------------


@check("ViT-B/32 inference: images/s and texts/s, fp32 and bf16")
def inference(device: torch.device, dry: bool, repeat: int) -> dict[str, Any]:
    config = cliplab.get_config("tiny-vit" if dry else "ViT-B-32")
    model = cliplab.CLIP(config).to(device).eval()
    n = 64 if dry else 1024
    size = config.vision.image_size
    images = torch.randn(n, 3, size, size, device=device)
    tokens = cliplab.tokenize(["a photo of a small dog on the grass"] * n).to(device)
    out = {}
    for precision in ("fp32", "bf16"):
        for name, fn, x in (
            ("images", model.encode_image, images),
            ("texts", model.encode_text, tokens),
        ):
            with (
                torch.no_grad(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
            ):
                fn(x)
                _sync(device)
                start = time.perf_counter()
                for _ in range(repeat):
                    fn(x)
                _sync(device)
            out[f"{name}_per_s_{precision}"] = n * repeat / (time.perf_counter() - start)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    p.add_argument("--batch", type=int, default=1024, help="first training batch (x4 until OOM)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per batch")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if unlisted")
    p.add_argument(
        "--out", type=Path, help="JSON output (default benchmarks/results/gpu-<gpu>.json)"
    )
    args = p.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to test the script on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if dry else "cuda")
    name = "cpu-dry-run" if dry else torch.cuda.get_device_name(device)
    peak = peak_tflops(device, args.peak_tflops)
    RESULTS.update(
        device=name,
        gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    print(f"device: {name}; bf16 peak: {peak} TFLOP/s; torch {torch.__version__}", flush=True)
    parity(device, dry)
    losses(device, dry)
    training(device, dry, 8 if dry else args.batch, peak, 2 if dry else args.steps)
    inference(device, dry, 2 if dry else 10)
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")
    print("\ncheck                                                    status   seconds")
    for c in RESULTS["checks"]:
        print(f"{c['check'][:56]:56s} {c['status']:8s} {c['seconds']:7.1f}")
    print(f"wrote {out}")
    failed = [c for c in RESULTS["checks"] if c["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
