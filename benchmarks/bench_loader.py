"""Image decoding and loading speed: cliplab's decoder against plain PIL, then the whole loader.

Workload: procedurally textured JPEGs at photo sizes (640x480, 800x600, 1024x768,
1280x960, 1600x1200 and their portrait versions; quality 90, seeded). Each image is smooth
large-scale structure (upsampled low-resolution noise, like scenes), gradients, and
fine-grained noise (like texture and sensor noise), so it compresses and decodes like a photo
(about 2-4 bits per pixel), not like flat colour. No photos ship with the project's
dependencies; scikit-image's sample photos are 512 px or smaller.

1. Decode to the model's input scale, shorter side 224, one process, one core:
   - plain PIL: ``Image.open(...).convert("RGB").resize(..., BICUBIC)``, the usual path;
   - cliplab: ``decode_image(data, image_size=224)``: header checks, JPEG draft mode (DCT
     scaling by 1/2, 1/4 or 1/8 with both sides kept >= 224), EXIF orientation, one resize.
   Both run on the same images in the same run, alternating, best of ``--repeats``; images/s
   per core is images / CPU seconds of this process (robust to other load on the machine),
   wall-clock rates are reported too. The mean absolute pixel difference between the two
   outputs shows what draft mode costs in quality.
2. End to end: the images in WebDataset shards -> ``WebDatasetSource`` -> ``ImageDecoder(224)``
   -> the prepared square + ``Augment`` per batch -> tokenizer -> batches of 32, through ``StreamingLoader`` with 0
   and 2 worker processes (wall clock, worker start-up included).

Results print and go to ``benchmarks/results/loader.json``.

    python benchmarks/bench_loader.py [--images 200] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import cliplab  # noqa: E402
from cliplab.augment import Augment  # noqa: E402
from cliplab.data import ImageTextStream, StreamingLoader  # noqa: E402
from cliplab.data.decode import ImageDecoder  # noqa: E402
from cliplab.data.images import decode_image  # noqa: E402
from cliplab.data.shardwriter import ShardWriter  # noqa: E402
from cliplab.data.webdataset import WebDatasetSource  # noqa: E402
from cliplab.transforms import resized_output_size  # noqa: E402

SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200)]
TARGET = 224


def textured_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth structure + gradients + fine noise, RGB, at ``width x height``."""
    coarse = rng.integers(0, 256, (rng.integers(4, 12), rng.integers(4, 12), 3), dtype=np.uint8)
    base = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32
    )
    mid = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    mid = np.asarray(
        Image.fromarray(mid).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
    )
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = (x / width * 60 - 30)[..., None] + (y / height * 40 - 20)[..., None]
    fine = rng.normal(0, 9, (height, width, 3)).astype(np.float32)
    pixels = 0.6 * base + 0.4 * mid + gradient + fine
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_jpegs(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        if i % 3 == 2:
            w, h = h, w  # some portraits
        buffer = io.BytesIO()
        textured_photo(w, h, rng).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def plain_pil(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    new_h, new_w = resized_output_size(image.height, image.width, TARGET)
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def cliplab_decode(data: bytes) -> Image.Image:
    return decode_image(data, image_size=TARGET)


def timed(fn, images: list[bytes]) -> tuple[float, float]:
    """(cpu seconds, wall seconds) to run ``fn`` over all images."""
    cpu, wall = time.process_time(), time.perf_counter()
    for data in images:
        fn(data)
    return time.process_time() - cpu, time.perf_counter() - wall


def tokenize(captions: list[str]) -> torch.Tensor:
    return cliplab.tokenize(captions, context_length=77, truncate=True)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loader_rate(urls: list[str], workers: int, batch_size: int, batches: int) -> dict[str, float]:
    """Images/s through ``StreamingLoader`` (wall clock, start-up included), after the first
    batch, and per CPU second (this process plus its reaped worker processes)."""
    stream = ImageTextStream(
        [WebDatasetSource(urls)],
        ImageDecoder(image_size=TARGET),
        Augment(),
        tokenize,
        batch_size,
        image_size=TARGET,
        seed=0,
        shuffle_buffer=64,
        batches_per_epoch=batches,
    )
    loader = StreamingLoader(stream, num_workers=workers)
    cpu, children, start = time.process_time(), _children_cpu(), time.perf_counter()
    count, first = 0, None
    for batch in loader.iter_epoch():
        count += len(batch)
        if first is None:
            first = time.perf_counter() - start
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu + _children_cpu() - children
    assert first is not None
    return {
        "images_per_s": round(count / wall, 1),
        "images_per_s_after_first_batch": round((count - batch_size) / (wall - first), 1),
        "images_per_cpu_s": round(count / cpu, 1),
        "images": count,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "first_batch_s": round(first, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-batches", type=int, default=12, help="batches per loader run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loader.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"making {args.images} textured JPEGs ...", flush=True)
    images = make_jpegs(args.images, args.seed)
    megapixels = (
        sum(Image.open(io.BytesIO(d)).width * Image.open(io.BytesIO(d)).height for d in images)
        / 1e6
    )
    mean_kb = sum(map(len, images)) / len(images) / 1024

    # same output size both ways; quality difference of draft mode
    diffs = []
    for data in images[:20]:
        a, b = np.asarray(plain_pil(data), np.float32), np.asarray(cliplab_decode(data), np.float32)
        assert a.shape == b.shape, (a.shape, b.shape)
        diffs.append(float(np.abs(a - b).mean()))

    runs: dict[str, dict[str, list[float]]] = {
        "plain_pil": {"cpu": [], "wall": []},
        "cliplab": {"cpu": [], "wall": []},
    }
    for _ in range(args.repeats):
        for name, fn in (("plain_pil", plain_pil), ("cliplab", cliplab_decode)):
            cpu, wall = timed(fn, images)
            runs[name]["cpu"].append(round(cpu, 3))
            runs[name]["wall"].append(round(wall, 3))
    per_core = {name: round(len(images) / min(r["cpu"]), 1) for name, r in runs.items()}
    wall_rate = {name: round(len(images) / min(r["wall"]), 1) for name, r in runs.items()}
    ratio = round(per_core["cliplab"] / per_core["plain_pil"], 2)
    print(
        f"decode to shorter side {TARGET}, {len(images)} JPEGs ({megapixels / len(images):.2f} MP, {mean_kb:.0f} KB on average):"
    )
    print(
        f"  plain PIL decode + resize : {per_core['plain_pil']:8.1f} images/s per core ({wall_rate['plain_pil']:.1f}/s wall)"
    )
    print(
        f"  cliplab draft + one resize: {per_core['cliplab']:8.1f} images/s per core ({wall_rate['cliplab']:.1f}/s wall)"
    )
    print(f"  speed-up {ratio}x; mean |pixel difference| {np.mean(diffs):.2f} / 255")

    loader: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with ShardWriter(tmp, max_samples=max(1, len(images) // 4)) as writer:
            for i, data in enumerate(images):
                writer.write(f"{i:06d}", {"jpg": data, "txt": f"a textured photograph, number {i}"})
        urls = [str(p) for p in sorted(Path(tmp).glob("*.tar"))]
        batches = max(2, args.loader_batches)
        for workers in (0, 2):
            loader[f"workers_{workers}"] = loader_rate(urls, workers, args.batch_size, batches)
            r = loader[f"workers_{workers}"]
            print(
                f"  StreamingLoader, {workers} workers: {r['images_per_s']:.1f} images/s wall "
                f"({r['images_per_s_after_first_batch']:.1f}/s after the first batch, "
                f"{r['images_per_cpu_s']:.1f} per CPU second; {r['images']} images in {r['wall_s']} s, "
                f"first batch after {r['first_batch_s']} s)"
            )

    report = {
        "benchmark": f"JPEG decode to shorter side {TARGET}: cliplab decode_image (draft mode + one resize) vs plain PIL decode + resize; then StreamingLoader end to end",
        "workload": f"{len(images)} procedurally textured JPEGs (quality 90, seed {args.seed}) at 640x480..1600x1200, a third portrait; {megapixels / len(images):.2f} MP and {mean_kb:.0f} KB on average",
        "images": len(images),
        "repeats": args.repeats,
        "images_per_s_per_core": per_core,
        "images_per_s_wall": wall_rate,
        "speedup_per_core": ratio,
        "mean_abs_pixel_difference": round(float(np.mean(diffs)), 3),
        "seconds": runs,
        "loader": {
            "pipeline": f"WebDatasetSource -> ImageDecoder({TARGET}) -> square + Augment({TARGET}) -> tokenize(77), batch {args.batch_size}, shuffle buffer 64",
            **loader,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "torch": torch.__version__,
            "note": "CPU shared with other jobs: per-core rates use this process's CPU time; loader rates are wall clock",
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
