"""Progress of long work on stderr, one display for every loop that takes a while.

On a terminal with ``tqdm`` installed (it is not a dependency) a bar; elsewhere (a log file,
CI, no tqdm) plain lines, at most one every few seconds (``LINE_EVERY_S``): at each tenth of
a known total, or at that pace when the total is unknown, and one at the end of a loop that
took that long; each with the rate. A loop over in a moment prints nothing. Training steps,
encoding batches, embedding a collection, few-shot probes and downloads all show progress
this way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["Progress", "progress_bar"]

T = TypeVar("T")

#: Seconds between lines when the total is unknown (no bar).
LINE_EVERY_S = 5.0


class Progress:
    """Counts work done and shows it (see the module docstring); a context manager.

    ``update(n, info)`` adds ``n`` units (``unit``: "step", "img", ...) and shows ``info``
    (a few named numbers: loss, learning rate) beside the count; ``write`` prints a message
    without breaking the bar.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        enabled: bool = True,
        bar: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.count = initial
        self._shown = initial  # the count the last line showed
        self.start = self.last = time.monotonic()
        self._started_at = initial
        self._next_tenth = self._tenth_after(initial)
        self._bar: Any = None
        if enabled and (bar if bar is not None else sys.stderr.isatty()):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=desc or None,
                    unit=unit,
                    dynamic_ncols=True,
                    leave=False,
                    file=sys.stderr,
                    unit_scale=unit == "B",
                    unit_divisor=1024 if unit == "B" else 1000,
                )

    def _tenth_after(self, count: int) -> int | None:
        if not self.total:
            return None
        step = max(1, self.total // 10)
        return (count // step + 1) * step

    def reset(self, total: int | None, count: int = 0) -> None:
        """A total learnt late (a download's length) and where the count stands (a resumed
        download's bytes already there)."""
        self.total, self.count, self._started_at = total, count, count
        self.start = time.monotonic()
        self._next_tenth = self._tenth_after(count)
        if self._bar is not None:
            self._bar.reset(total=total)
            self._bar.update(count)

    def _line(self, info: Mapping[str, Any] | None) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.count - self._started_at) / elapsed
        head = f"{self.desc}: " if self.desc else ""
        if self.unit == "B":  # bytes read as megabytes
            of = f"/{self.total / 1e6:,.1f}" if self.total else ""
            text = f"{head}{self.count / 1e6:,.1f}{of} MB  {rate / 1e6:.3g} MB/s"
        else:
            of = f"/{self.total}" if self.total else ""
            text = f"{head}{self.count}{of} {self.unit}  {rate:.3g} {self.unit}/s"
        if info:
            text += "  " + "  ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        return text

    def update(self, n: int = 1, info: Mapping[str, Any] | None = None) -> None:
        """``n`` more units done; ``info``: numbers to show beside the count."""
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if info:
                self._bar.set_postfix({k: _fmt(v) for k, v in info.items()}, refresh=False)
            return
        now = time.monotonic()
        if self._next_tenth is not None:
            due = self.count >= self._next_tenth or self.count == self.total
            if due:
                self._next_tenth = self._tenth_after(self.count)
        else:
            due = True
        if due and now - self.last >= LINE_EVERY_S:
            self.last = now
            self._shown = self.count
            print(self._line(info), file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Ends the bar, or prints the last line when the count has not just been printed."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif (
            self.enabled
            and self.count > self._started_at
            and self._shown != self.count
            and time.monotonic() - self.start >= LINE_EVERY_S
        ):
            print(self._line(None) + " (done)", file=sys.stderr, flush=True)
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_bar(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
) -> Iterator[T]:
    """Iterate over ``iterable`` with a :class:`Progress` (one unit per item)."""
    if not enabled:
        yield from iterable
        return
    with Progress(total, desc=desc, unit=unit) as progress:
        for item in iterable:
            yield item
            progress.update()
