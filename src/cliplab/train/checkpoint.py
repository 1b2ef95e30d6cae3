"""Training checkpoints that survive anything: atomic, pruned, validated, pickle-light.

A checkpoint is ``OUTPUT/checkpoints/step_00000100.pt``: one ``torch.save`` of plain data
(tensors, numbers, strings, lists, dicts) holding the model, optimiser, scheduler and loss
scaler, the step and counters, every rank's RNG states and data position, and the config. It
is written to a temporary file in the same directory, fsynced, then renamed
(``cliplab.fileio.atomic_write``), so a crash at any moment leaves either the old
set or the new one. Loading uses ``torch.load(weights_only=True)``: no code runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cliplab.fileio import atomic_write
from cliplab.train.config import Config

FORMAT = "cliplab-train"
VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.(pt|dcp)$")
#: The file of a sharded checkpoint (a ``step_N.dcp`` folder) that holds everything but the
#: model and optimiser (which ``torch.distributed.checkpoint`` writes as shards beside it).
EXTRA = "extra.pt"


class NonFiniteCheckpointError(RuntimeError):
    """Raised instead of writing a checkpoint that holds NaN or infinity."""


def checkpoint_dir(output: Path) -> Path:
    return Path(output) / "checkpoints"


def checkpoint_path(output: Path, step: int) -> Path:
    return checkpoint_dir(output) / f"step_{step:08d}.pt"


def has_checkpoint(output: Path, step: int) -> bool:
    """Whether the checkpoint of ``step`` exists (a file, or a sharded folder)."""
    return any(s == step for s, _ in list_checkpoints(output))


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
    """Delete temporary files (and sharded-checkpoint folders) left by a writer that was
    killed (in the output directory and its checkpoints); returns how many."""
    stale = [
        p
        for directory in (Path(output), checkpoint_dir(output))
        if directory.is_dir()
        for p in directory.iterdir()
        if p.name.startswith(".") and p.name.endswith(".tmp")
    ]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
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


def save_train_state(output: Path, step: int, state: dict[str, Any], keep: int) -> Path:
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
    prune(output, keep)
    return path


def prune(output: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (files or sharded folders)."""
    for _, old in list_checkpoints(output)[:-keep]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def save_sharded_train_state(
    output: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int,
    is_main: bool,
) -> Path:
    """A sharded checkpoint (FSDP): ``step_N.dcp/`` holds every rank's shards of the model and
    optimiser (``torch.distributed.checkpoint``) and ``extra.pt`` (the rest, plain data).
    Collective: every rank calls it. Written in a temporary folder renamed at the end (by
    rank 0, after all ranks finished), so a crash leaves the previous checkpoints whole."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.tensor import DTensor

    model_state, optim_state = get_state_dict(model, optimizer)
    bad = torch.zeros(1)
    for _, t in _tensors({"model": model_state, "optimizer": optim_state}):
        local = t.to_local() if isinstance(t, DTensor) else t
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            bad += 1
    if dist.is_initialized():
        dist.all_reduce(bad)
    if bad.item():
        raise NonFiniteCheckpointError(
            f"not writing the checkpoint of step {step}: non-finite values in the model or optimiser"
        )
    final = checkpoint_dir(output) / f"step_{step:08d}.dcp"
    tmp = final.with_name(f".{final.name}.tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    if dist.is_initialized():
        dist.barrier()
    if is_main:
        payload = {"format": FORMAT, "version": VERSION, "step": step, "sharded": True, **extra}
        atomic_write(tmp / EXTRA, lambda path: torch.save(payload, path))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(output, keep)
    if dist.is_initialized():
        dist.barrier()
    return final


def load_sharded_train_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Load a sharded checkpoint's model (and optimiser) into ``model``: sharded with FSDP on
    any number of ranks, wrapped in DDP, or a plain model in one process (no process group
    needed). Tensors are read, never unpickled."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"])
        return
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def load_train_state(path: Path) -> dict[str, Any]:
    """Read one checkpoint (tensors on the CPU); raises on a damaged or foreign file. For a
    sharded checkpoint this is its ``extra.pt`` (``"sharded": True``, ``"path"``): the model
    and optimiser are loaded with :func:`load_sharded_train_state`."""
    if Path(path).is_dir():
        state = torch.load(Path(path) / EXTRA, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            state["path"] = str(path)
    else:
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
            return load_train_state(path)
        except Exception as e:  # a truncated file, a foreign file: fall back to the previous one
            warnings.warn(f"skipping unreadable checkpoint {path} (step {step}): {e}", stacklevel=2)
    return None


# -- whether a run can be continued -----------------------------------------------------
#: Settings a resumed run may change; anything else must match the checkpoint's run.
RESUMABLE_CHANGES = (
    "output",
    "train.steps",
    "train.epochs",
    "train.threads",
    "train.max_nonfinite",
    "train.parallelism",  # the same maths sharded or replicated; checkpoints load either way
    "checkpoint.",
    "log.",
    "eval.",
)


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        name = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif a != b:
            diffs.append(name)
    return diffs


def check_resume_compatible(saved: dict[str, Any], current: Config) -> list[str]:
    """Raise if the run in ``saved`` cannot be continued exactly with ``current``; return the
    settings that changed but may (steps, logging, checkpoints, evaluation)."""
    with contextlib.suppress(ValueError):  # settings added since the run began: defaults
        saved = Config.from_dict(saved).to_dict()
    diffs = config_differences(saved, current.to_dict())
    allowed = [d for d in diffs if d.startswith(RESUMABLE_CHANGES)]
    blocking = [d for d in diffs if d not in allowed]
    if blocking:
        raise ValueError(
            "the output directory holds a run with a different configuration ("
            + ", ".join(blocking)
            + "); resuming would not continue it exactly. Use another --output, or restore those settings."
        )
    return allowed
