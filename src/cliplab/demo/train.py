"""The demo's training step: the recipe through :class:`cliplab.train.Trainer`, resuming a run
interrupted in the same output directory, with its length fitted to this machine's speed.

The machines the demo runs on differ by 2x or more in pairs/s (2 cores with AMX and bf16 do
~1,900 pairs/s on the recipe, 2 AVX2-only cores ~870), and the demo promises a fixed
wall-clock budget. :func:`fit_steps` times a few real steps of the recipe and, where the
recipe's ``train.steps`` would not fit in the budget, trains fewer steps (the cosine schedule
follows the new length). The recipe's own count is the ceiling; an explicit
``--set train.steps=N`` or a resumed run keeps its count.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cliplab.demo.plan import Log
from cliplab.train.budget import time_steps

#: ``cliplab demo``'s default training budget, of its 15 minutes (set-up, data and evaluation
#: take 4-5 on a fresh clone).
DEFAULT_MINUTES = 8.5
#: Runs of at most this many steps are not timed (the timing would cost more than the run).
UNTIMED_STEPS = 100
#: What comes after the timed steps when a deadline is set: the training run's start (the
#: cache decodes every image), evaluation, the report and the search collections (0.8 min
#: after training on the slowest machine seen, an AVX2-only AMD EPYC), with a margin.
AFTER_TIMING_MINUTES = 1.6


def train(config: Any, log: Log = print, threads: int | None = None) -> dict[str, Any]:
    """Train ``config`` to the end (or resume it); returns the trainer's summary."""
    from cliplab.train import Trainer

    if threads:
        config = config.replace(train=dataclasses.replace(config.train, threads=threads))
    log(f"== training -> {config.output} ({config.train.steps} steps)")
    summary = Trainer(config).fit()
    if summary.get("status") != "complete":
        raise RuntimeError(f"training stopped: {summary.get('status')}; re-run to resume")
    return summary


def run_steps(run_dir: str | Path) -> int | None:
    """The step count the training run in ``run_dir`` started with (its ``config.json``);
    ``None`` where there is no run or its config cannot be read."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        return int(config["train"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fit_steps(
    config: Any,
    minutes: float,
    overrides: Sequence[str] = (),
    log: Log = print,
    deadline: float | None = None,
) -> Any:
    """``config`` with ``train.steps`` lowered (to a multiple of 10) so that training takes
    about ``minutes`` here, or less where ``deadline`` (``time.time()`` seconds by which the
    whole run should end) leaves less after the timing and :data:`AFTER_TIMING_MINUTES`;
    unchanged when the recipe already fits, when ``overrides`` set ``train.steps``, when the
    run is short, or when ``config.output`` holds a run to resume (its own count is kept, so
    a resumed run ends where it would have)."""
    steps = config.train.steps
    if deadline is not None:
        minutes = minutes if minutes > 0 else float("inf")
    if minutes <= 0 or steps <= UNTIMED_STEPS or config.train.epochs > 0:
        return config
    if any(o.replace(" ", "").startswith("train.steps=") for o in overrides):
        return config
    if (Path(config.output) / "config.json").is_file():
        kept = run_steps(config.output) or steps
        if kept != steps:
            log(f"== resuming the run in {config.output}: {kept} steps, as it started")
        return config.replace(train=dataclasses.replace(config.train, steps=min(kept, steps)))
    rate = time_steps(config)
    if config.train.low_res_size:  # time_steps timed the first steps, the low-resolution ones
        until = config.train.low_res_until
        full = time_steps(config.replace(train=dataclasses.replace(config.train, low_res_size=0)))
        rate = 1 / (until / rate + (1 - until) / full)
    if deadline is not None:
        left = (deadline - time.time()) / 60 - AFTER_TIMING_MINUTES
        if left < minutes:
            log(f"== {left:.1f} min left for training before the deadline")
            minutes = max(left, 0.1)
    # ~10% of the time goes to the tracking evaluations, checkpoints and logging (measured:
    # 735 pairs/s over a whole demo run whose steps ran at a median of 804)
    # a multiple of 10 (of 100 it lost up to a tenth of the minutes at big batches)
    fitted = int(minutes * 60 * rate * 0.9 / config.data.batch_size) // 10 * 10
    fitted = max(100, fitted)
    if fitted >= steps:
        log(f"== this machine trains {rate:,.0f} pairs/s: {steps} steps fit in {minutes:.3g} min")
        return config
    log(
        f"== this machine trains {rate:,.0f} pairs/s: {fitted} of the recipe's {steps} steps fit "
        f"in {minutes:.3g} min (--minutes 0: all of them)"
    )
    return config.replace(train=dataclasses.replace(config.train, steps=fitted))
