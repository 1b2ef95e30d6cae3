"""Progress reporting for long evaluations: tqdm when installed, else a plain stderr line."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_bar(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Iterate over ``iterable``, showing progress on stderr when ``enabled``.

    Uses tqdm if it is importable (it is not a dependency of cliplab); otherwise prints a
    line at most every 5 seconds and one at the end.
    """
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr)
        return
    start = last = time.monotonic()
    count = 0
    for item in iterable:
        yield item
        count += 1
        now = time.monotonic()
        if now - last >= 5.0:
            last = now
            of = f"/{total}" if total else ""
            print(f"{desc}: {count}{of} ({now - start:.0f}s)", file=sys.stderr, flush=True)
    print(f"{desc}: {count} done in {time.monotonic() - start:.1f}s", file=sys.stderr, flush=True)
