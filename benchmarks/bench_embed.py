"""Is the embed pipeline the bottleneck? ``cliplab embed``'s images/s against the model's own
``encode_image`` throughput on already-decoded, already-preprocessed tensors, same images,
same batch size, in one run.

    python benchmarks/bench_embed.py --images data/eval/emoji-google/images \
        --model runs/demo/train/model --model random:ViT-B-32 --limit 2000

Writes ``benchmarks/results/embed.json`` (machine, versions, images/s and the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import cpu_name  # noqa: E402

import cliplab  # noqa: E402
from cliplab.data.images import open_image  # noqa: E402
from cliplab.data.sources import spec_for_path  # noqa: E402
from cliplab.search.embed import embed  # noqa: E402


def model_only(model, pixels: torch.Tensor, batch_size: int) -> float:
    """images/s of ``encode_image`` + normalisation on preprocessed tensors."""
    with torch.no_grad():
        model.encode_image(pixels[:batch_size])  # warm-up
        start = time.perf_counter()
        for batch in pixels.split(batch_size):
            torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1)
        return len(pixels) / (time.perf_counter() - start)


def decode_only(folder: Path, size: int = 224) -> dict[str, float]:
    """images/s of reading + decoding + the eval preprocessing alone, in one process: the
    most any pipeline on one core can feed a model, whatever the model."""
    from cliplab.transforms import EvalTransform

    preprocess = EvalTransform(32)
    files = sorted(folder.iterdir())
    start = time.perf_counter()
    for f in files:
        preprocess(open_image(f))
    return {"images_per_s": len(files) / (time.perf_counter() - start), "image_size": 32}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="a folder of images")
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--limit", type=int, default=2000, help="images per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, action="append", help="decoding processes (repeatable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed.json"))
    a = p.parse_args()
    files = sorted(Path(a.images).rglob("*.png"))[: a.limit]
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    folder = work / "images"
    folder.mkdir()
    for f in files:
        shutil.copyfile(f, folder / f.name)
    rows = []
    ceiling = decode_only(folder)
    print(
        f"reading, decoding and preprocessing alone (one process): {ceiling['images_per_s']:.0f} images/s"
    )
    for spec in a.model:
        name = spec
        if spec.startswith("random:"):
            model, preprocess = cliplab.load(spec)
        else:
            model, preprocess = cliplab.load(spec)
            name = f"{spec} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M)"
        pixels = torch.stack([preprocess(open_image(f)) for f in sorted(folder.iterdir())])
        only = model_only(model, pixels, a.batch_size)
        for workers in a.workers or [0]:
            out = work / f"c-{len(rows)}"
            result = embed(
                spec_for_path(str(folder)),
                out,
                model,
                preprocess,
                model_spec=spec,
                batch_size=a.batch_size,
                workers=workers,
                captions=False,
                progress=False,
            )
            ratio = result.images_per_s / only
            rows.append(
                {
                    "model": name,
                    "image_size": model.image_size,
                    "images": len(files),
                    "model_only_images_per_s": round(only, 1),
                    "embed_images_per_s": round(result.images_per_s, 1),
                    "ratio": round(ratio, 3),
                    "workers": workers,
                    "batch_size": a.batch_size,
                }
            )
            print(
                f"{name}, {workers} worker(s): model alone {only:.1f} images/s, embed "
                f"{result.images_per_s:.1f} images/s -> {100 * ratio:.0f}% (target >= 90%)"
            )
    shutil.rmtree(work)
    report = {
        "command": " ".join(["python benchmarks/bench_embed.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "decode_and_preprocess_only_images_per_s": round(ceiling["images_per_s"], 1),
        "rows": rows,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
