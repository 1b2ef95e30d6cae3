"""Which URL to fetch next: per-host queues with limits on connections and request rate.

A thread asks :meth:`HostScheduler.take` for work and gets an item of a host that has a free
connection slot and whose rate allows a request now; hosts take turns, so one slow or
rate-limited host never holds the threads while others wait. ``Retry-After`` pauses a whole
host (:meth:`pause`); a retried item waits out its backoff without holding a thread
(:meth:`later`). Per-host state (its robots.txt, whether it opted out) lives on
:class:`Host`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Host", "HostScheduler", "Item"]


@dataclass
class Item:
    """One row to fetch: where it goes (shard, row), its URL and what it carries."""

    shard: int
    row: int
    url: str
    host: str
    caption: str
    extra: dict[str, Any]
    attempts: int = 0
    finished: bool = False  # settled and counted by the scheduler


@dataclass
class Host:
    name: str
    queue: deque[Item] = field(default_factory=deque)
    active: int = 0
    next_time: float = 0.0  # no request before this (rate limit, Retry-After)
    scheduled: bool = False  # in the runnable deque or the sleeping heap
    opted_out: str | None = None  # the directive it answered with
    robots: Any = None
    robots_lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0


class HostScheduler:
    """Hands items to worker threads; ``per_host`` connections and ``rate`` requests/s (0:
    no limit) for each host. ``take`` returns None once :meth:`close` was called and
    nothing is left."""

    def __init__(self, per_host: int, rate: float = 0.0) -> None:
        if per_host < 1:
            raise ValueError(f"per_host must be >= 1, got {per_host}")
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self.per_host, self.interval = per_host, (1.0 / rate if rate else 0.0)
        self.hosts: dict[str, Host] = {}
        self._runnable: deque[Host] = deque()
        self._sleeping: list[tuple[float, int, Host]] = []
        self._delayed: list[tuple[float, int, Item]] = []
        self._tie = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.pending = 0  # items queued or delayed, not yet taken
        self.inflight = 0  # taken, not yet finished or given back

    def host(self, name: str) -> Host:
        with self._cond:
            return self.hosts.setdefault(name, Host(name))

    # -- bookkeeping (under the lock) ----------------------------------------------------
    def _schedule(self, h: Host, now: float) -> None:
        if h.scheduled or not h.queue or h.active >= self.per_host:
            return
        h.scheduled = True
        if h.next_time <= now:
            self._runnable.append(h)
        else:
            heapq.heappush(self._sleeping, (h.next_time, next(self._tie), h))
        self._cond.notify()

    def _wake(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, item = heapq.heappop(self._delayed)
            h = self.hosts.setdefault(item.host, Host(item.host))
            h.queue.appendleft(item)
            self._schedule(h, now)
        while self._sleeping and self._sleeping[0][0] <= now:
            _, _, h = heapq.heappop(self._sleeping)
            if h.next_time > now:  # paused again meanwhile
                heapq.heappush(self._sleeping, (h.next_time, next(self._tie), h))
                continue
            self._runnable.append(h)

    # -- the API -------------------------------------------------------------------------
    def put(self, item: Item) -> None:
        with self._cond:
            h = self.hosts.setdefault(item.host, Host(item.host))
            h.queue.append(item)
            self.pending += 1
            self._schedule(h, time.monotonic())

    def later(self, item: Item, delay: float) -> None:
        """Give ``item`` back to be taken again in ``delay`` seconds (a retry's backoff)."""
        with self._cond:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._tie), item))
            self.pending += 1
            self.inflight -= 1
            self._cond.notify()

    def finish(self, item: Item) -> None:
        """``item`` is settled (written or counted as failed): it will not come back."""
        with self._cond:
            self.inflight -= 1
            if self._closed and self.pending == 0 and self.inflight == 0:
                self._cond.notify_all()

    def pause(self, name: str, seconds: float) -> None:
        """No request to host ``name`` for ``seconds`` (its Retry-After)."""
        with self._cond:
            h = self.hosts.setdefault(name, Host(name))
            h.next_time = max(h.next_time, time.monotonic() + seconds)

    def take(self) -> Item | None:
        with self._cond:
            while True:
                now = time.monotonic()
                self._wake(now)
                while self._runnable:
                    h = self._runnable.popleft()
                    if h.next_time > now:  # paused since it was queued
                        heapq.heappush(self._sleeping, (h.next_time, next(self._tie), h))
                        continue
                    item = h.queue.popleft()
                    h.active += 1
                    h.requests += 1
                    h.next_time = now + self.interval
                    h.scheduled = False
                    self._schedule(h, now)
                    self.pending -= 1
                    self.inflight += 1
                    return item
                if self._closed and self.pending == 0 and self.inflight == 0:
                    return None
                wake = [entry[0] for entry in (*self._sleeping[:1], *self._delayed[:1])]
                timeout = max(0.0, min(wake) - now) if wake else None
                self._cond.wait(timeout)

    def release(self, item: Item) -> None:
        """The item's request is over: its host's connection slot is free again."""
        with self._cond:
            h = self.hosts[item.host]
            h.active -= 1
            self._schedule(h, time.monotonic())

    def close(self) -> None:
        """No more items will be put: ``take`` returns None once the queues are empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def backlog(self) -> int:
        """Items not yet settled: queued, delayed or being fetched."""
        with self._cond:
            return self.pending + self.inflight
