"""Many requests, one pass through the model: the server's micro-batcher.

Each request thread hands its texts (or images) to :class:`Batcher` and waits; one worker
thread takes everything that arrived within ``max_wait`` seconds of the first item (at most
``max_batch`` items), runs the model once for all of them, and gives each request its rows
back. On a CPU, encoding 32 short queries in one pass costs little more than encoding one,
so throughput grows with the load instead of queueing behind a lock; the search itself
(FAISS or exact, and the metadata) runs in the request threads, in parallel.

A request's error (an unreadable image, an over-long text) fails that request only: a batch
that raises is split and each request retried alone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

__all__ = ["Batcher"]


class Batcher:
    """Runs ``encode_texts(list)`` and ``encode_images(list)`` for many callers at once."""

    def __init__(
        self,
        encode_texts: Callable[[Sequence[str]], np.ndarray],
        encode_images: Callable[[Sequence[Any]], np.ndarray],
        max_batch: int = 64,
        max_wait: float = 0.003,
    ) -> None:
        self._encode = {"text": encode_texts, "image": encode_images}
        self.max_batch, self.max_wait = max_batch, max_wait
        self._queue: queue.Queue[tuple[str, list[Any], Future[np.ndarray]] | None] = queue.Queue()
        self.batches = 0  # passes through the model (for tests and stats)
        self.items = 0
        self._thread = threading.Thread(target=self._run, name="cliplab-batcher", daemon=True)
        self._thread.start()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) unit vectors of ``texts``, computed in the next batch."""
        return self._submit("text", list(texts))

    def images(self, images: Sequence[Any]) -> np.ndarray:
        """(n, D) unit vectors of ``images`` (PIL images), computed in the next batch."""
        return self._submit("image", list(images))

    def _submit(self, kind: str, items: list[Any]) -> np.ndarray:
        future: Future[np.ndarray] = Future()
        self._queue.put((kind, items, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            waiting = {"text": [], "image": []}
            waiting[first[0]].append(first)
            count = len(first[1])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                waiting[job[0]].append(job)
                count += len(job[1])
            for kind, jobs in waiting.items():
                if jobs:
                    self._pass(kind, jobs)

    def _pass(self, kind: str, jobs: list[tuple[str, list[Any], Future[np.ndarray]]]) -> None:
        """One model pass for ``jobs``; a failing batch is retried job by job."""
        items = [item for _, job_items, _ in jobs for item in job_items]
        try:
            vectors = self._encode[kind](items)
        except Exception as e:  # noqa: BLE001 - handed to the callers
            if len(jobs) == 1:
                jobs[0][2].set_exception(e)
                return
            for job in jobs:
                self._pass(kind, [job])
            return
        self.batches += 1
        self.items += len(items)
        start = 0
        for _, job_items, future in jobs:
            future.set_result(vectors[start : start + len(job_items)])
            start += len(job_items)
