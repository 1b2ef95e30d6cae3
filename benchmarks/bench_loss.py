"""Peak extra memory of the contrastive loss (forward + backward): plain vs chunked.

Each measurement runs in a fresh process. The features (N x 512, fp32, requiring grad) are
allocated first; "extra" is what the loss and its backward add on top of them:
- on CUDA, the allocator's peak minus the memory allocated before the call;
- on CPU, the process's peak resident set size (``ru_maxrss``) minus the resident size just
  before the call (large tensors are mmap-allocated and returned at free, so the peak RSS
  tracks live tensors).
The plain loss materialises N x N logits (and their softmax and gradient), so it grows as
N^2; the chunked one holds one ``chunk x chunk`` block at a time plus the feature gradients
(2 x N x D floats), so it grows as N.

    python benchmarks/bench_loss.py                       # CPU: plain to 16384, chunked to 65536
    python benchmarks/bench_loss.py --plain 4096 --chunked 4096 16384   # quicker
Writes benchmarks/results/loss_memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "loss_memory.json"
DIM = 512


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(kind: str, n: int, chunk: int, device: str) -> dict:
    """Run one loss forward + backward; called in a child process."""
    import torch
    import torch.nn.functional as F

    from cliplab.loss import chunked_clip_loss, clip_loss

    torch.manual_seed(0)
    images = F.normalize(torch.randn(n, DIM, device=device), dim=-1).requires_grad_()
    texts = F.normalize(torch.randn(n, DIM, device=device), dim=-1).requires_grad_()
    log_scale = torch.tensor(2.659, device=device, requires_grad=True)
    fn = (
        clip_loss
        if kind == "plain"
        else (lambda i, t, s: chunked_clip_loss(i, t, s, chunk_size=chunk))
    )
    # warm up kernels on a tiny problem so their one-off allocations are not counted
    small = [x[:64].detach().clone().requires_grad_() for x in (images, texts)]
    fn(small[0], small[1], log_scale.exp()).backward()
    del small
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    start = time.perf_counter()
    loss = fn(images, texts, log_scale.exp())
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB -> MiB (Linux)
    seconds = time.perf_counter() - start
    return {
        "kind": kind,
        "n": n,
        "dim": DIM,
        "chunk_size": chunk if kind == "chunked" else None,
        "device": device,
        "extra_mib": round(peak - before, 1),
        "features_mib": round(2 * n * DIM * 4 / 2**20, 1),
        "seconds": round(seconds, 2),
        "loss": float(loss),
    }


def run_child(kind: str, n: int, chunk: int, device: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(n), str(chunk), device]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "n": n, "device": device, "error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {
            "kind": kind,
            "n": n,
            "device": device,
            "error": out.stderr.strip().splitlines()[-1:],
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def extrapolate(rows: list[dict], target: int = 65536) -> dict:
    """The plain loss's memory at ``target`` from its largest measurement (it grows as N^2),
    beside the chunked loss measured there (if it was)."""
    plain = [r for r in rows if r.get("kind") == "plain" and "extra_mib" in r]
    chunked = [
        r for r in rows if r.get("kind") == "chunked" and r.get("n") == target and "extra_mib" in r
    ]
    out: dict = {"n": target}
    if plain:
        largest = max(plain, key=lambda r: r["n"])
        out["plain_extra_mib_extrapolated"] = round(
            largest["extra_mib"] * (target / largest["n"]) ** 2
        )
        out["plain_extrapolated_from_n"] = largest["n"]
    if chunked:
        out["chunked_extra_mib_measured"] = chunked[0]["extra_mib"]
        out["chunked_under_1_gib"] = chunked[0]["extra_mib"] < 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plain", type=int, nargs="*", default=[4096, 8192, 16384])
    parser.add_argument("--chunked", type=int, nargs="*", default=[4096, 16384, 32768, 65536])
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, chunk, device = args.child
        print(json.dumps(measure(kind, int(n), int(chunk), device)))
        return
    import torch

    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    rows = []
    for kind, sizes in (("plain", args.plain), ("chunked", args.chunked)):
        for n in sizes:
            row = run_child(kind, n, args.chunk_size, device, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "what": "peak extra memory (MiB) of the CLIP loss forward + backward over N x 512 fp32 features",
        "method": "CUDA allocator peak - allocated before"
        if device == "cuda"
        else "peak RSS - RSS before (fresh process)",
        "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "results": rows,
        "at_65536": extrapolate(rows),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
