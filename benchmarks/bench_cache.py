"""Training-data throughput on the demo's data: the one stream, with and without its cache.

Workload: the built emoji shards (``data/shards/emoji-twitter`` and ``emoji-twitter-skins``,
64 px RGBA PNGs with emojibase metadata; run ``make demo`` or ``cliplab data build emoji``
first), batches of 256 at 32 px with captions drawn per epoch and tokenized (context 32),
random resized crops (scale 0.5-1), as the demo recipe trains.

- streaming: ``StreamingLoader`` over ``WebDatasetSource`` -> ``ImageDecoder(32)`` -> the
  prepared square per sample -> ``Augment`` per batch, with 0 and 1 worker processes (1 is
  what suits 2 cores beside the training process);
- cached: the same loader with ``MemoryCache`` in front of each source (decode once; then
  only captions per sample, and the same batch augmentation); its one-off decoding time is
  reported separately.

Both are timed in the same run over the same number of batches (after one warm-up batch);
images/s per core divides by this process's CPU seconds plus its workers'. Results print and
go to ``benchmarks/results/cache.json``.

    python benchmarks/bench_cache.py [--batches 20] [--data data]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from cliplab.augment import Augment, AugmentConfig
from cliplab.data import ImageTextStream, StreamingLoader
from cliplab.data.cache import MemoryCache
from cliplab.data.decode import ImageDecoder
from cliplab.data.webdataset import WebDatasetSource
from cliplab.recipes.builders import shard_urls
from cliplab.recipes.captions import draw_caption
from cliplab.train.data import TokenizeCaptions

SIZE, BATCH, CONTEXT = 32, 256, 32


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def sources(data: Path) -> list[WebDatasetSource]:
    return [
        WebDatasetSource(shard_urls(name, data), name=name)
        for name in ("emoji-twitter", "emoji-twitter-skins")
    ]


def time_batches(loader, batches: int) -> dict[str, float]:
    it = iter(loader)
    next(it)  # warm-up (worker start-up, first shard)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        b = next(it)
        assert b.images.shape == (BATCH, 3, SIZE, SIZE)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    images = batches * BATCH
    return {
        "images_per_s": round(images / wall, 1),
        "images_per_cpu_s": round(images / cpu, 1),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--data", type=Path, default=Path("data"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    decoder = ImageDecoder(image_size=SIZE, caption_fn=draw_caption)
    augment = Augment(
        AugmentConfig(crop_scale=(0.5, 1.0), color_jitter=0.3, grayscale=0.2, blur=0.3)
    )

    def loader(srcs: list, workers: int) -> StreamingLoader:
        stream = ImageTextStream(
            srcs, decoder, augment, TokenizeCaptions(CONTEXT), BATCH, image_size=SIZE
        )
        return StreamingLoader(stream, num_workers=workers)

    results: dict[str, dict[str, float]] = {}
    for workers in (0, 1):
        results[f"streaming_workers_{workers}"] = time_batches(
            loader(sources(args.data), workers), args.batches
        )
        print(f"streaming, {workers} workers: {results[f'streaming_workers_{workers}']}")
    t0 = time.perf_counter()
    cached = [MemoryCache(s, decoder, SIZE) for s in sources(args.data)]
    load_s = time.perf_counter() - t0
    results["cached"] = {
        **time_batches(loader(cached, 0), args.batches),
        "decode_once_s": round(load_s, 2),
    }
    count = sum(c.num_samples() for c in cached)
    print(f"cached: {results['cached']} ({count} samples)")
    best_stream = max(r["images_per_s"] for k, r in results.items() if k.startswith("streaming"))
    ratio = results["cached"]["images_per_s"] / best_stream
    print(f"cached / best streaming: {ratio:.1f}x images/s")
    out = {
        "benchmark": __doc__.split("\n")[0],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "batch": BATCH,
        "image_size": SIZE,
        "batches": args.batches,
        "results": results,
        "speedup_vs_best_streaming": round(ratio, 2),
    }
    path = Path(__file__).parent / "results" / "cache.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
