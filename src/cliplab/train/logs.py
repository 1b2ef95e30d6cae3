"""What a run reports: JSONL records, TensorBoard scalars, a progress bar, PNG plots.

``OUTPUT/metrics.jsonl`` holds one JSON object per record, ``{"kind": "train", "step": ...}``
or ``{"kind": "eval", ...}``. On resume, records after the checkpoint's step (written by the
interrupted run, and about to be redone) are dropped, so the file reads as one clean run.
TensorBoard (``OUTPUT/tensorboard``) is optional: skipped if not installed.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cliplab.fileio import atomic_write

METRICS_FILE = "metrics.jsonl"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPUs, the process's peak RSS on CPUs."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a torn last line (a killed writer) is ignored."""
    records = []
    if not Path(path).exists():
        return records
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe values: floats (NaN/inf as strings), ints, strings."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        out[k] = v
    return out


class MetricsLogger:
    """JSONL + TensorBoard writer of the main process (``enabled=False`` on other ranks)."""

    def __init__(
        self, output: Path, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0
    ) -> None:
        self.enabled = enabled
        self.path = Path(output) / METRICS_FILE
        self._writer = None
        self._file = None
        if not enabled:
            return
        Path(output).mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))  # a kill here loses nothing
        self._file = self.path.open("a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(
                    str(Path(output) / "tensorboard"),
                    purge_step=resume_step + 1 if resume_step else None,
                )
            except ImportError:
                self._writer = None

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **_clean(metrics)}
        self._file.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self._writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_PANELS = (
    ("loss", "loss", False),
    ("temperature", "temperature (1 / exp(t))", False),
    ("lr", "learning rate", False),
    ("samples_per_s", "samples / s", False),
    ("data_wait", "fraction of time waiting for data", False),
    ("grad_norm", "gradient norm", True),
)


def plot_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """A PNG with the training curves (and evaluation metrics, if any); None without data."""
    from cliplab.evaluation.output import pyplot, save_figure

    plt = pyplot()

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train:
        return None
    eval_keys = sorted(
        {
            k
            for r in evals
            for k, v in r.items()
            if isinstance(v, int | float) and k not in ("step", "time")
        }
    )
    panels = [p for p in _PANELS if any(isinstance(r.get(p[0]), int | float) for r in train)]
    n = len(panels) + (1 if eval_keys else 0)
    cols = 3
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, title, log_scale) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), int | float)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        if log_scale:
            ax.set_yscale("log")
    if eval_keys:
        ax = axes.flat[len(panels)]
        for key in eval_keys:
            pts = [(r["step"], r[key]) for r in evals if isinstance(r.get(key), int | float)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, label=key)
        ax.set_title("evaluation", fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, out_path, dpi=110)
