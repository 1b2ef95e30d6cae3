"""The server's micro-batcher: concurrent requests share model passes, each gets its own rows
back, a bad request fails alone; through a real server, concurrent answers equal sequential
ones."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cliplab.search.query import Searcher
from cliplab.serve.batcher import Batcher

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from test_serve import collection, run_server  # noqa: E402, F401 - the fixture, reused

WORDS = ["red", "green", "blue", "square", "a photo", "dog", "night", "beach", "car", "tree"]


def test_concurrent_callers_share_passes_and_get_their_own_rows(collection: Path) -> None:  # noqa: F811
    searcher = Searcher(collection)
    texts = [f"{a} {b}" for a in WORDS for b in WORDS][:64]
    alone = searcher.embed_texts(texts)
    batcher = Batcher(searcher.embed_texts, searcher.encode_pixels, max_wait=0.02)
    start = threading.Barrier(32)

    def ask(i: int) -> np.ndarray:
        start.wait()
        return batcher.texts(texts[2 * i : 2 * i + 2])

    with ThreadPoolExecutor(32) as pool:
        rows = list(pool.map(ask, range(32)))
    assert np.allclose(np.concatenate(rows), alone, atol=1e-6)
    assert batcher.items == 64 and batcher.batches < 32  # shared passes, not one per caller
    # a bad request (an empty text) fails alone; the others in its batch are answered
    errors, answers = [], []

    def bad_or_good(text: str) -> None:
        try:
            answers.append(batcher.texts([text]))
        except ValueError as e:
            errors.append(e)

    threads = [threading.Thread(target=bad_or_good, args=(t,)) for t in ["red", "", "blue"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and len(answers) == 2
    batcher.close()


def test_concurrent_requests_answer_as_sequential_ones(collection: Path) -> None:  # noqa: F811
    queries = [f"{a} {b}" for a in WORDS for b in WORDS][:48]
    server = run_server(collection)
    base = next(server)
    try:
        with httpx.Client(timeout=30) as client:
            sequential = [
                client.get(f"{base}/search", params={"q": q, "k": 5}).json()["results"]
                for q in queries
            ]

        def ask(q: str) -> list:
            with httpx.Client(timeout=30) as c:
                return c.get(f"{base}/search", params={"q": q, "k": 5}).json()["results"]

        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(ask, queries))
        for a, b in zip(sequential, concurrent):
            assert [h["id"] for h in a] == [h["id"] for h in b]
            assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-5)
        bad = httpx.get(f"{base}/search", params={"q": "x" * 1001, "k": 5})
        assert bad.status_code == 400  # an over-long query is the caller's error, not a 500
    finally:
        server.close()
