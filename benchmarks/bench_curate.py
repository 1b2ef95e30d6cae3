"""Curation throughput: the local engine (one process; a process pool) against the Ray engine
(a local Ray cluster with 2 CPUs) on a pool of at least 1M captions, and the hours 1.6B texts
(MetaCLIP's pool) would take on N workers at the measured per-worker rate.

The pool: real captions of the project's sources (every built shard set under data/shards,
captioned by its own caption function with varied draws), non-English labels (emojibase's
other locales, which the English filter must drop) and generated junk (camera file names,
hashes, numbers, empty strings), shuffled, written as 8 Parquet files (a real pool is many
files: the Ray engine reads files in parallel).

    python benchmarks/bench_curate.py [--texts 1000000] [--engines local,pool,ray]

Results: benchmarks/results/curate-{cap,balance}.json (machine, versions, texts/s, kept, extrapolation).
Needs `make data` (the shard sets) and the curate + ray extras.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, machine

from cliplab.data.curate import CurateConfig, curate
from cliplab.data.decode import ImageDecoder
from cliplab.data.sources import read_shard_set, resolve_caption_fn
from cliplab.data.webdataset import WebDatasetSource
from cliplab.fileio import write_json

POOL_TARGET = 1.6e9  # MetaCLIP's pool


def real_captions(per_set: int, draws: int, seed: int = 0) -> list[str]:
    """Captions of every built shard set, ``draws`` caption-function draws per sample."""
    rng = random.Random(seed)
    out: list[str] = []
    for folder in sorted((ROOT / "data" / "shards").iterdir()):
        try:
            info = read_shard_set(folder)
        except (FileNotFoundError, ValueError):
            continue
        name = info.get("caption_fn")
        decoder = ImageDecoder(caption_fn=resolve_caption_fn(name, False) if name else None)
        source = WebDatasetSource([str(folder / s) for s in info["shards"]])
        n = 0
        for sample in source.scan():
            for _ in range(draws):
                try:
                    out.append(decoder.caption(sample, rng))
                except Exception:  # noqa: BLE001 - a bad sample is just not a caption
                    break
            n += 1
            if n >= per_set:
                break
        print(f"  {folder.name}: {n} samples", file=sys.stderr)
    return out


def foreign_labels(limit: int) -> list[str]:
    """Emoji labels in the other locales emojibase-data carries (real non-English text)."""
    from cliplab.recipes.install import source_path

    out: list[str] = []
    try:
        root = ROOT / source_path("emojibase-data")
    except FileNotFoundError:
        return out
    for path in sorted(root.rglob("data.json")):
        if path.parent.name.startswith("en"):
            continue
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.extend(i["label"] for i in items if isinstance(i, dict) and i.get("label"))
        if len(out) >= limit:
            break
    return out[:limit]


def junk(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return f"DSC{rng.randrange(100000):05d}.JPG"
    if kind == 1:
        return f"{rng.getrandbits(64):016x}"
    if kind == 2:
        return str(rng.randrange(10**9))
    if kind == 3:
        return ""
    return f"IMG_{rng.randrange(10000):04d} copy ({rng.randrange(9)})"


def build_pool(out: Path, texts: int, seed: int = 0) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    real = real_captions(per_set=4000, draws=3)
    foreign = foreign_labels(60_000)
    print(
        f"pool: {len(real):,} real captions, {len(foreign):,} non-English labels", file=sys.stderr
    )
    kinds = {"real": 0, "foreign": 0, "junk": 0}
    out.mkdir(parents=True, exist_ok=True)
    files = 8
    per_file = -(-texts // files)
    n = 0
    for f in range(files):
        rows = []
        for _ in range(min(per_file, texts - n)):
            r = rng.random()
            if r < 0.7:
                text, kind = rng.choice(real), "real"
            elif r < 0.85 and foreign:
                text, kind = rng.choice(foreign), "foreign"
            else:
                text, kind = junk(rng), "junk"
            kinds[kind] += 1
            rows.append({"id": f"{n:08d}", "caption": text})
            n += 1
        pq.write_table(pa.Table.from_pylist(rows), out / f"pool-{f:02d}.parquet")
    return kinds


def driver_rate(inputs: list[str], select: str, texts: int = 200_000) -> float:
    """texts/s of the driver alone (selection in input order + writing kept.jsonl), with the
    checks precomputed: the ceiling of any engine that hands the driver every record."""
    from cliplab.data.curate import pipeline

    config = CurateConfig(workers=1, write_shards=False, select=select, limit=texts)
    queries, english, _ = pipeline.prepare(inputs, config, log=lambda *_: None)
    read = (inputs, "auto", None, "id")
    done = list(pipeline.checked_local(read, queries.queries, english, config, 1))
    original = pipeline.checked_local
    pipeline.checked_local = lambda *a, **k: iter(done)  # type: ignore[assignment]
    try:
        report = curate(
            inputs, ROOT / "benchmarks" / ".cache" / "curate-driver", config, id_column="id",
            log=lambda *_: None,
        )  # fmt: skip
    finally:
        pipeline.checked_local = original  # type: ignore[assignment]
    return float(report["steady_texts_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1_000_000)
    parser.add_argument("--engines", default="local,pool,ray")
    parser.add_argument(
        "--select", default="cap", choices=("cap", "balance"), help="hard cap or MetaCLIP balancing"
    )
    parser.add_argument("--pool", default=str(ROOT / "benchmarks" / ".cache" / "curate-pool"))
    args = parser.parse_args()
    pool = Path(args.pool)
    stamp = pool / f"built-{args.texts}.json"
    if stamp.exists():
        kinds = json.loads(stamp.read_text())
    else:
        kinds = build_pool(pool, args.texts)
        stamp.write_text(json.dumps(kinds))
    inputs = [str(p) for p in sorted(pool.glob("pool-*.parquet"))]
    runs = []
    for engine in args.engines.split(","):
        config = CurateConfig(
            engine="ray" if engine == "ray" else "local",
            workers={"local": 1, "pool": 2, "ray": 2}[engine],
            chunk_size=2000,
            write_shards=False,
            select=args.select,
        )
        out = ROOT / "benchmarks" / ".cache" / f"curate-{engine}"
        start = time.perf_counter()
        report = curate(inputs, out, config, id_column="id")
        wall = time.perf_counter() - start
        runs.append(
            {
                "engine": engine,
                "select": args.select,
                "workers": report["workers"],
                "texts": report["texts"],
                "kept": report["kept"],
                "texts_per_second": report["texts_per_second"],
                "steady_texts_per_second": report["steady_texts_per_second"],
                "startup_seconds": report["startup_seconds"],
                "prepare_seconds": report["prepare_seconds"],
                "wall_seconds": round(wall, 1),
                "kept_sha": __import__("hashlib")
                .sha256((out / "kept.jsonl").read_bytes())
                .hexdigest()[:16],
            }
        )
        print(json.dumps(runs[-1]), file=sys.stderr)
    single = next((r for r in runs if r["engine"] == "local"), runs[0])
    rate = single["steady_texts_per_second"]
    driver = driver_rate(inputs, args.select)
    passes = 2 if args.select == "balance" else 1  # balancing counts, then selects
    extrapolation = {
        f"{n} workers": round(passes * POOL_TARGET / min(rate * n, driver) / 3600, 1)
        for n in (1, 8, 16, 64, 256, 1024)
    }
    result = {
        "machine": machine(),
        "pool": {"texts": args.texts, "files": len(inputs), **kinds},
        "runs": runs,
        "same_kept_set": len({r["kept_sha"] for r in runs}) == 1,
        "driver_texts_per_second": round(driver, 1),
        "extrapolation_rule": "hours = passes x 1.6e9 / min(N x the single process's steady "
        "texts/s, the driver's ceiling): the checks scale with workers, the in-order "
        "selection and the writing run in one process; balancing reads the pool twice",
        "hours_for_1.6B_texts_at_single_process_rate_per_worker": extrapolation,
        "command": f"python benchmarks/bench_curate.py --texts {args.texts} --select {args.select}",
    }
    write_json(RESULTS / f"curate-{args.select}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
