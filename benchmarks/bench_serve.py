"""A bounded load test of ``cliplab serve`` on loopback: text queries at a fixed rate against
a collection of 100k vectors; latency percentiles and errors.

The collection holds synthetic embeddings (clustered unit vectors) recorded under a real
model's name and fingerprint, so that every request runs the real path: tokenize and encode
the query with the model, search the HNSW index, read the metadata, answer JSON. The server
is ``cliplab serve`` in its own process; the client sends requests on schedule (open loop:
a slow answer does not delay the next request) from a thread pool, and stops by itself.

    python benchmarks/bench_serve.py --model runs/demo/train/model --vectors 100000 --rate 50 --seconds 20

Writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "car",
    "house",
    "tree",
    "face",
    "hand",
    "heart",
    "star",
    "sun",
    "moon",
    "flower",
    "fish",
    "bird",
]


def build_collection(path: Path, model_spec: str, n: int, seed: int = 0) -> None:
    import cliplab
    from cliplab.encode import model_fingerprint
    from cliplab.search.collection import Collection
    from cliplab.search.embed import _PartWriter
    from cliplab.search.index import build_index

    model, _ = cliplab.load(model_spec)
    dim = model.text.text_projection.shape[1]
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(500, dim))
    info = {"format": "cliplab-embeddings", "version": 1, "model": model_spec,
            "fingerprint": model_fingerprint(model), "dim": dim, "dtype": "float16",
            "captions": False, "source": "synthetic vectors (load test)"}  # fmt: skip
    path.mkdir(parents=True)
    (path / "embed.json").write_text(json.dumps(info))
    writer = _PartWriter(path, 0, "float16", False, dim)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = centres[rng.integers(0, 500, m)] + 0.5 * rng.normal(size=(m, dim))
        writer.images = [(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)]
        writer.meta = [
            {
                "key": f"img{start + i:07d}",
                "path": None,
                "caption": f"synthetic {start + i}",
                "width": 64,
                "height": 64,
            }  # fmt: skip
            for i in range(m)
        ]
        writer.records = m
        writer.flush(start)
    print(json.dumps(build_index(Collection(path), recall_queries=200)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import httpx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--vectors", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=50.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    build_collection(work / "c", a.model, a.vectors)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cliplab", "serve", str(work / "c"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get(f"{base}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the server did not start: {server.stderr.read().decode()[-2000:]}"
                )
            time.sleep(0.1)
        rng = random.Random(0)
        for _ in range(20):  # warm-up, not measured
            client.get(f"{base}/search", params={"q": "warm up", "k": 20})

        def one(query: str) -> tuple[float, int]:
            t = time.perf_counter()
            try:
                status = client.get(f"{base}/search", params={"q": query, "k": 20}).status_code
            except httpx.HTTPError:
                status = 0
            return 1000 * (time.perf_counter() - t), status

        total = int(a.rate * a.seconds)
        futures = []
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=64) as pool:
            for i in range(total):
                due = start + i / a.rate
                time.sleep(max(0.0, due - time.perf_counter()))
                query = " ".join(rng.sample(WORDS, rng.randint(1, 4)))
                futures.append(pool.submit(one, query))
            results = [f.result() for f in futures]
        elapsed = time.perf_counter() - start
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=30)
    latencies = np.array([ms for ms, status in results if status == 200])
    errors = sum(1 for _, status in results if status != 200)
    report = {
        "command": " ".join(["python benchmarks/bench_serve.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (server and client share them)",
        "vectors": a.vectors,
        "requests": total,
        "target_rate": a.rate,
        "achieved_rate": round(total / elapsed, 1),
        "errors": errors,
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1),
            "p90": round(float(np.percentile(latencies, 90)), 1),
            "p99": round(float(np.percentile(latencies, 99)), 1),
            "max": round(float(latencies.max()), 1),
        },
    }
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
