"""Training-data throughput on the demo's data: the in-memory loader against the streaming one.

Workload: the built emoji shards (``data/shards/emoji-twitter`` and ``emoji-twitter-skins``,
64 px RGBA PNGs with emojibase metadata; run ``make demo`` or ``cliplab data build emoji``
first), batches of 256 at 32 px with captions drawn per epoch and tokenized (context 32),
random resized crops (scale 0.5-1), as the demo recipe trains.

- streaming: ``StreamingLoader`` over ``WebDatasetSource`` -> ``ImageDecoder(32)`` -> PIL
  ``TrainTransform`` per sample, with 0 and 1 worker processes (1 is what suits 2 cores
  beside the training process);
- in memory: ``MemoryLoader`` (decode once, then crop, colour-jitter and tokenize whole
  batches in the training process); its one-off decoding time is reported separately.

Both are timed in the same run over the same number of batches (after one warm-up batch);
images/s per core divides by this process's CPU seconds plus its workers'. Results print and
go to ``benchmarks/results/memory_loader.json``.

    python benchmarks/bench_memory_loader.py [--batches 20] [--data data]
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

from cliplab.data import ImageTextStream, StreamingLoader
from cliplab.data.decode import ImageDecoder
from cliplab.data.memory import MemoryLoader
from cliplab.data.webdataset import WebDatasetSource
from cliplab.datasets.builders import shard_urls
from cliplab.datasets.captions import draw_caption
from cliplab.train.data import ImageTransform, TokenizeCaptions

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
    results: dict[str, dict[str, float]] = {}
    for workers in (0, 1):
        stream = ImageTextStream(
            sources(args.data),
            decode=decoder,
            transform=ImageTransform(SIZE, True, (0.5, 1.0)),
            tokenize=TokenizeCaptions(CONTEXT),
            batch_size=BATCH,
            shuffle_buffer=1000,
        )
        loader = StreamingLoader(stream, num_workers=workers)
        results[f"streaming_workers_{workers}"] = time_batches(loader, args.batches)
        print(f"streaming, {workers} workers: {results[f'streaming_workers_{workers}']}")
    t0 = time.perf_counter()
    memory = MemoryLoader(
        sources(args.data),
        [decoder, decoder],
        image_size=SIZE,
        tokenize=TokenizeCaptions(CONTEXT),
        batch_size=BATCH,
        scale=(0.5, 1.0),
        color_jitter=0.3,
        grayscale=0.2,
        blur=0.3,
    )
    load_s = time.perf_counter() - t0
    results["in_memory"] = {**time_batches(memory, args.batches), "decode_once_s": round(load_s, 2)}
    print(f"in memory: {results['in_memory']} ({memory.num_samples} samples)")
    best_stream = max(r["images_per_s"] for k, r in results.items() if k.startswith("streaming"))
    ratio = results["in_memory"]["images_per_s"] / best_stream
    print(f"in-memory / best streaming: {ratio:.1f}x images/s")
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
    path = Path(__file__).parent / "results" / "memory_loader.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
