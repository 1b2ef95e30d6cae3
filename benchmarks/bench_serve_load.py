"""Many clients at once: ``cliplab serve`` with batching (concurrent requests share model
passes, searches run in parallel) against the one-request-at-a-time server
(``--no-batching``), in the same run, on the same collection.

``--clients`` closed-loop clients (each sends its next request when the last is answered)
mix text searches (``GET /search``), image searches (``POST /search`` with a 64 px PNG) and
embedding requests (``POST /embed``, 4 texts) for ``--seconds`` against a collection of
``--vectors`` embeddings (synthetic unit vectors recorded under the real model's name and
fingerprint, with an HNSW index: every request runs the real path, see bench_serve.py).
Each server runs in its own process; the clients are threads of this one. A third server
adds ``--runtime`` (default ``auto``: the fastest runtime measured on this machine) to
batching: everything ``cliplab serve`` can do against the server before batching.

    python benchmarks/bench_serve_load.py --model random:ViT-B-32 --vectors 100000 --clients 32 --seconds 60

Writes ``benchmarks/results/serve_concurrency.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from bench_serve import WORDS, build_collection, free_port
from common import machine, write
from PIL import Image

KINDS = ("text", "image", "embed")


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def start_server(
    collection: Path, batching: bool, runtime: str = "torch"
) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "cliplab", "serve", str(collection), "--port", str(port)]
    cmd += ["--runtime", runtime]
    if not batching:
        cmd.append("--no-batching")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)


def load(base: str, clients: int, seconds: float, seed: int = 0) -> dict:
    import httpx

    images = [png(i) for i in range(16)]
    results: list[tuple[str, float, int]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        mine = []
        with httpx.Client(timeout=60) as c:
            while time.monotonic() < stop:
                kind = rng.choice(KINDS)
                t = time.perf_counter()
                try:
                    if kind == "text":
                        q = " ".join(rng.sample(WORDS, rng.randint(1, 4)))
                        r = c.get(f"{base}/search", params={"q": q, "k": 20})
                    elif kind == "image":
                        files = {"image": ("q.png", rng.choice(images), "image/png")}
                        r = c.post(f"{base}/search", files=files, data={"k": "20"})
                    else:
                        texts = [" ".join(rng.sample(WORDS, 2)) for _ in range(4)]
                        r = c.post(f"{base}/embed", json={"texts": texts})
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                mine.append((kind, 1000 * (time.perf_counter() - t), status))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ok = [ms for _, ms, status in results if status == 200]
    out = {
        "requests": len(results),
        "errors": sum(1 for *_, status in results if status != 200),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(ok, 50)), 1),
            "p99": round(float(np.percentile(ok, 99)), 1),
        },
        "by_kind": {},
    }
    for kind in KINDS:
        mine = [ms for k, ms, status in results if k == kind and status == 200]
        if mine:
            out["by_kind"][kind] = {
                "requests": len(mine),
                "p50_ms": round(float(np.percentile(mine, 50)), 1),
                "p99_ms": round(float(np.percentile(mine, 99)), 1),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="random:ViT-B-32")
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument(
        "--runtime",
        default="auto",
        help="the third server's query runtime (batched; default auto: measured here)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-load-"))
    build_collection(work / "c", args.model, args.vectors)
    runs = {}
    servers = (
        ("one at a time (--no-batching)", False, "torch"),  # the server before batching
        ("batched", True, "torch"),
        (f"batched, --runtime {args.runtime}", True, args.runtime),
    )
    for name, batching, runtime in servers:
        proc, base = start_server(work / "c", batching, runtime)
        try:
            load(base, 4, 5.0, seed=99)  # warm-up, not counted
            with urllib.request.urlopen(base + "/health", timeout=30) as response:
                used = json.loads(response.read())["runtime"]  # auto's choice, concretely
            runs[name] = {**load(base, args.clients, args.seconds), "runtime": used}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(name, json.dumps(runs[name]), flush=True)
    one, batched = runs["one at a time (--no-batching)"], runs["batched"]
    fast = runs[servers[2][0]]
    ratio = batched["requests_per_s"] / one["requests_per_s"]
    ratio_fast = fast["requests_per_s"] / one["requests_per_s"]
    print(f"batched / one at a time: {ratio:.2f}x throughput")
    print(f"batched, --runtime {args.runtime} / one at a time: {ratio_fast:.2f}x throughput")
    write(
        "serve_concurrency.json",
        {
            "machine": machine(),
            "command": "python benchmarks/bench_serve_load.py " + " ".join(sys.argv[1:]),
            "model": args.model,
            "vectors": args.vectors,
            "clients": args.clients,
            "seconds": args.seconds,
            "runs": runs,
            "throughput_ratio": ratio,
            "throughput_ratio_runtime": ratio_fast,
            "runtime": args.runtime,
        },
    )


if __name__ == "__main__":
    main()
