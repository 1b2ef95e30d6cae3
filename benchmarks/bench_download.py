"""``cliplab data download`` against img2dataset: the same URLs from the same local web, the
same resize and encoding, side by side in one run.

The local web (:mod:`cliplab.demo.localweb`) serves real images (the installed Twitter
emoji, 64 px PNGs, and Tux Paint stamps, photos up to ~600 px) from ``--sites`` hosts on
127.0.0.1, running in this process; each tool runs as its own command in a subprocess, in
alternating order, ``--repeats`` times. Both keep the shorter side at most 256 px
(never upscaling), re-encode as JPEG quality 95, 10,000 samples per shard, with the same
processes x threads, no retries. cliplab runs with ``--min-size 1``: by default it rejects
images under 8 px (``too-small``), which img2dataset keeps (4 of the emoji are 1-2 px).

img2dataset comes from its own virtual environment (it pins its own dependencies):

    python3.11 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset
    python benchmarks/bench_download.py --urls 20000 --img2dataset /tmp/i2d/bin/img2dataset

Writes ``benchmarks/results/download.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from common import ROOT, machine, write

from cliplab.demo.localweb import Site, local_web, read_images  # noqa: E402
from cliplab.recipes.install import source_path  # noqa: E402


def pairs(sites: list[Site], names: list[str], n: int, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        for i in range(n):
            site = sites[i % len(sites)]
            name = names[i % len(names)]
            w.writerow([f"{site.url('img', name)}?n={i}", f"image {i} {name[:40]}"])


def run_cliplab(table: Path, out: Path, args: argparse.Namespace) -> tuple[float, int]:
    cmd = [
        sys.executable,
        "-m",
        "cliplab",
        "data",
        "download",
        str(table),
        "--out",
        str(out),
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--size",
        "256",
        "--resize-mode",
        "keep-ratio",
        "--encode",
        "jpg",
        "--quality",
        "95",
        "--min-size",
        "1",
        "--shard-size",
        "10000",
        "--retries",
        "0",
        "--per-host",
        str(args.threads),
        "--quiet",
    ]
    t = time.perf_counter()
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    seconds = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    if summary["failures"]:
        print("  cliplab failures:", summary["failures"], flush=True)
    return seconds, summary["successes"]


def run_img2dataset(table: Path, out: Path, args: argparse.Namespace) -> tuple[float, int]:
    cmd = [
        args.img2dataset,
        "--url_list",
        str(table),
        "--input_format",
        "csv",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--processes_count",
        str(args.processes),
        "--thread_count",
        str(args.threads),
        "--image_size",
        "256",
        "--resize_mode",
        "keep_ratio",
        "--resize_only_if_bigger",
        "True",
        "--encode_format",
        "jpg",
        "--encode_quality",
        "95",
        "--number_sample_per_shard",
        "10000",
        "--retries",
        "0",
        "--enable_wandb",
        "False",
    ]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return seconds, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--urls", type=int, default=20000)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--img2dataset", default="/tmp/i2d/bin/img2dataset")
    args = ap.parse_args()

    images = read_images(source_path("emoji-datasource-twitter"))
    images.update(read_images(source_path("tuxpaint-stamps-default")))
    sites = [Site(images) for _ in range(args.sites)]
    names = sorted(images)
    runs: dict[str, list[dict[str, Any]]] = {"cliplab": [], "img2dataset": []}
    with local_web(*sites), tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "pairs.csv"
        pairs(sites, names, args.urls, table)
        for r in range(args.repeats):
            order = ["cliplab", "img2dataset"] if r % 2 == 0 else ["img2dataset", "cliplab"]
            for tool in order:
                out = Path(tmp) / f"{tool}-{r}"
                run = run_cliplab if tool == "cliplab" else run_img2dataset
                seconds, ok = run(table, out, args)
                runs[tool].append(
                    {"seconds": seconds, "successes": ok, "images_per_s": ok / seconds}
                )
                print(
                    f"{tool:<12} run {r}: {ok:,} images in {seconds:.1f} s = {ok / seconds:,.0f}/s",
                    flush=True,
                )
    best = {tool: max(x["images_per_s"] for x in rs) for tool, rs in runs.items()}
    median = {
        tool: sorted(x["images_per_s"] for x in rs)[len(rs) // 2] for tool, rs in runs.items()
    }
    ratio = best["cliplab"] / best["img2dataset"]
    print(f"cliplab / img2dataset, best of {args.repeats}: {ratio:.2f}x")
    i2d_version = subprocess.run(
        [
            str(Path(args.img2dataset).parent / "python"),
            "-c",
            "from importlib.metadata import version; print(version('img2dataset'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = {
        "machine": {
            **machine(),
            "img2dataset": i2d_version,
            "cliplab": metadata.version("cliplab"),
        },
        "command": "python benchmarks/bench_download.py " + " ".join(sys.argv[1:]),
        "urls": args.urls,
        "sites": args.sites,
        "images": len(images),
        "processes": args.processes,
        "threads": args.threads,
        "runs": runs,
        "best_images_per_s": best,
        "median_images_per_s": median,
        "ratio_best": ratio,
    }
    write("download.json", result)


if __name__ == "__main__":
    main()
