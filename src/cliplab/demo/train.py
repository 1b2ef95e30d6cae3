"""The demo's training step: the recipe through :class:`cliplab.train.Trainer`, resuming a run
interrupted in the same output directory."""

from __future__ import annotations

import dataclasses
from typing import Any

from cliplab.demo.plan import Log


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
