"""Keeping a collection in step costs what changed: embed a 100,000-image folder from scratch,
change 1% of it (new files, rewritten files, deleted files), and time the sync that brings
the collection in step, in the same run. Both are library calls with the model already
loaded (``cliplab.search.embed.embed``), so the figure is the work each does; a command adds
its start-up (imports and loading the model, a few seconds) to both.

    python benchmarks/bench_sync.py --images 100000 --changed 0.01

Writes ``benchmarks/results/sync.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, write
from PIL import Image

import cliplab  # noqa: E402
from cliplab.data.sources import spec_for_path  # noqa: E402
from cliplab.search.collection import Collection  # noqa: E402
from cliplab.search.embed import embed  # noqa: E402

MODEL = "random:tiny-vit"


def png(seed: int) -> bytes:
    """A small distinct picture: a colour gradient, one pixel set by the seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, 32)[None, :, None] * rng.integers(0, 256, 3)
    pixels = np.clip(base * 0.5 + ramp * 0.5, 0, 255).astype(np.uint8).repeat(32, axis=0)
    pixels[seed % 32, (seed // 32) % 32] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def make_folder(root: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = root / f"{i // 1000:03d}" / f"img{i:06d}.png"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(i))
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--changed", type=float, default=0.01, help="share of files changed")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    model, preprocess = cliplab.load(MODEL)
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        start = time.perf_counter()
        paths = make_folder(work / "pics", args.images)
        print(f"wrote {args.images:,} images in {time.perf_counter() - start:.1f} s", flush=True)
        spec = spec_for_path(str(work / "pics"))

        def run() -> tuple[float, object]:
            t = time.perf_counter()
            result = embed(spec, work / "c", model, preprocess, model_spec=MODEL,
                           batch_size=args.batch_size, progress=False, log=print)  # fmt: skip
            return time.perf_counter() - t, result

        full, first = run()
        print(f"from scratch: {first.embedded:,} images in {full:.1f} s", flush=True)
        # 1%: a third new, a third rewritten, a third deleted
        k = int(args.images * args.changed)
        rng = np.random.default_rng(0)
        picks = rng.choice(len(paths), 2 * (k // 3), replace=False)
        rewritten, deleted = picks[: k // 3], picks[k // 3 :]
        for i in rewritten:
            paths[i].write_bytes(png(10_000_000 + int(i)))
        for i in deleted:
            paths[i].unlink()
        added = k - 2 * (k // 3)
        (work / "pics" / "new").mkdir()
        for j in range(added):
            (work / "pics" / "new" / f"new{j:06d}.png").write_bytes(png(20_000_000 + j))
        seconds, second = run()
        ratio = seconds / full
        print(f"sync after {k:,} changes: {second.sync} in {seconds:.2f} s = {100 * ratio:.1f}% "
              f"of embedding from scratch", flush=True)  # fmt: skip
        c = Collection(work / "c")
        assert c.live == args.images - len(deleted) + added
        result = {
            "machine": machine(),
            "command": "python benchmarks/bench_sync.py " + " ".join(sys.argv[1:]),
            "model": MODEL,
            "images": args.images,
            "changed": {"rewritten": len(rewritten), "deleted": len(deleted), "added": added},
            "from_scratch_s": full,
            "from_scratch_images_per_s": first.embedded / full,
            "sync_s": seconds,
            "sync": second.sync,
            "sync_embedded": second.embedded,
            "ratio": ratio,
            "collection_live": c.live,
        }
        write("sync.json", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
