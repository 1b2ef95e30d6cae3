"""Training checkpoints that survive anything: atomic, pruned, validated, pickle-light.

A checkpoint is ``OUTPUT/checkpoints/step_00000100.pt``: one ``torch.save`` of plain data
(tensors, numbers, strings, lists, dicts) holding the model, optimiser, scheduler and loss
scaler, the step and counters, every rank's RNG states and data position, and the config. It
is written to a temporary file in the same directory, fsynced, then renamed
(``cliplab.fileio.atomic_write``), so a crash at any moment leaves either the old
set or the new one. Loading uses ``torch.load(weights_only=True)``: no code runs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cliplab.fileio import atomic_write

FORMAT = "cliplab-train"
VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


class NonFiniteCheckpointError(RuntimeError):
    """Raised instead of writing a checkpoint that holds NaN or infinity."""


def checkpoint_dir(output: Path) -> Path:
    return Path(output) / "checkpoints"


def checkpoint_path(output: Path, step: int) -> Path:
    return checkpoint_dir(output) / f"step_{step:08d}.pt"


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint, oldest first."""
    directory = checkpoint_dir(output)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        m = _NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def remove_partial_writes(output: Path) -> int:
    """Delete temporary files left by a writer that was killed (in the output directory and
    its checkpoints); returns how many."""
    stale = [
        p
        for directory in (Path(output), checkpoint_dir(output))
        if directory.is_dir()
        for p in directory.iterdir()
        if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _tensors(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield "", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            for name, t in _tensors(v):
                yield f"{k}.{name}" if name else str(k), t
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            for name, t in _tensors(v):
                yield f"{i}.{name}" if name else str(i), t


def non_finite_entries(
    state: dict[str, Any], sections: tuple[str, ...] = ("model", "optimizer")
) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity in the given sections."""
    bad = []
    for section in sections:
        for name, t in _tensors(state.get(section, {})):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{section}.{name}")
    return bad


def save_checkpoint(output: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step`` and keep the last ``keep``.

    Refuses (``NonFiniteCheckpointError``) when the model or optimiser holds a non-finite
    value: the previous checkpoints stay the latest good ones.
    """
    bad = non_finite_entries(state)
    if bad:
        raise NonFiniteCheckpointError(
            f"not writing the checkpoint of step {step}: non-finite values in {', '.join(bad[:5])}"
        )
    path = checkpoint_path(output, step)
    payload = {"format": FORMAT, "version": VERSION, "step": step, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    for _, old in list_checkpoints(output)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one checkpoint (tensors on the CPU); raises on a damaged or foreign file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cliplab training checkpoint")
    if state.get("version") != VERSION:
        raise ValueError(
            f"{path}: checkpoint version {state.get('version')} is not supported (expected {VERSION})"
        )
    return state


def load_latest(output: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``output`` (damaged ones are skipped with a
    warning), or None when there is none."""
    for step, path in reversed(list_checkpoints(output)):
        try:
            return load_checkpoint(path)
        except Exception as e:  # a truncated file, a foreign file: fall back to the previous one
            warnings.warn(f"skipping unreadable checkpoint {path} (step {step}): {e}", stacklevel=2)
    return None
