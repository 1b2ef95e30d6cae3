"""Reading checkpoint files without executing code from them.

Formats are recognised by their bytes, not their names: safetensors (an 8-byte header
length then JSON), zip archives (``torch.save`` files, read with ``weights_only=True``; or
TorchScript archives, read by cliplab's own restricted reader that never runs TorchScript),
and legacy pickles (``weights_only=True``). Every failure is a ``CheckpointError`` that
names the file and what was expected.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from cliplab.checkpoints.errors import CheckpointError

_PICKLE_PROTOCOLS = {0x80}  # protocol 2+ pickles start with PROTO (0x80)


def sniff(path: Path) -> str:
    """'safetensors', 'zip' or 'pickle' from the first bytes of ``path``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] and head[0] in _PICKLE_PROTOCOLS:
        return "pickle"
    raise CheckpointError(
        f"{path}: unknown checkpoint format (expected safetensors, a torch.save file or an "
        f"OpenAI TorchScript archive; first bytes {head[:8]!r})"
    )


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for bad headers/sizes
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e
    return tensors, metadata


def read_torch_file(path: Path) -> Any:
    """A ``torch.save`` file, unpickled with ``weights_only=True`` (no code execution)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle: the file contains objects other than tensors and plain "
            f"containers, and cliplab never executes code from checkpoints ({e})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({e})") from e


def read_file(path: Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """(object, metadata, kind) of one checkpoint file; kind in safetensors/torch/torchscript."""
    kind = sniff(path)
    if kind == "safetensors":
        tensors, metadata = read_safetensors(path)
        return tensors, metadata, "safetensors"
    if kind == "zip":
        from cliplab.checkpoints.torchscript import (
            is_torchscript_archive,
            read_torchscript_state_dict,
        )

        try:
            is_script = is_torchscript_archive(path)
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: truncated or corrupt zip archive ({e})") from e
        if is_script:
            return read_torchscript_state_dict(path), {}, "torchscript"
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj, {}, "torch"


def unwrap_state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint dict (training checkpoints nest them)."""
    for key in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(key)
        if (
            isinstance(inner, dict)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (keys: {sorted(obj)[:10]})")
    non_tensor = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if non_tensor and len(tensors) < 4:
        raise CheckpointError(f"{path}: not a state dict (non-tensor entries {non_tensor[:10]})")
    return tensors


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
